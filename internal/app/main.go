package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/spoolhq/spool/internal/buildinfo"
	"github.com/spoolhq/spool/internal/config"
)

// Runner is a long-lived part.
type Runner interface {
	Run(ctx context.Context) error
}

// stopped treats an error caused by the stop itself (a cancelled start-up
// step, say) as a clean stop.
func stopped(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Main is the whole main function of a server binary: flags, config, logger,
// then build and run under SIGINT/SIGTERM. It returns the process's exit
// code: 2 for a configuration it cannot use, 1 for a failure, 0 for a clean
// stop.
func Main(name string, flagKeys []string, build func(*config.Config, *slog.Logger) (Runner, error)) int {
	fs := pflag.NewFlagSet(name, pflag.ExitOnError)
	file := fs.String("config", "", "config file (default: $SPOOL_CONFIG, else ./spool.yaml if present)")
	version := fs.Bool("version", false, "print the version (module, commit, Go) and exit")
	config.AddFlags(fs, nil, flagKeys...)
	_ = fs.Parse(os.Args[1:])
	if *version {
		fmt.Println(name, buildinfo.String()) //nolint:forbidigo // the whole answer to --version
		return 0
	}
	c, err := config.Load(config.Options{Flags: fs, File: *file})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	}
	logger := NewLogger(c.Log).With("service", name)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := build(c, logger)
	if err == nil {
		err = r.Run(ctx)
	}
	if err != nil {
		logger.Error("stopped", "error", err)
		return 1
	}
	logger.Info("stopped cleanly")
	return 0
}

// NewLogger builds the process logger from config.
func NewLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
