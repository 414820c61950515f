package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spoolhq/spool/internal/cli"
	"github.com/spoolhq/spool/pipeline"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.New().ExecuteContext(ctx)
	stop()
	if err != nil {
		// The error may carry a server's or a database's words: printable.
		fmt.Fprintln(os.Stderr, "spoolctl:", pipeline.Printable(err.Error(), 4*pipeline.MaxErrorBytes))
		os.Exit(cli.ExitCode(err))
	}
}
