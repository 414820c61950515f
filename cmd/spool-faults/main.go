// Command spool-faults runs spool's binaries under crashes, restarts and
// rebalances and checks that nothing was lost or applied twice; see
// docs/reliability.md. `make faults` builds the binaries and starts it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spoolhq/spool/internal/tools/faults"
	"github.com/spoolhq/spool/internal/tools/tooldb"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := faults.Config{Out: os.Stdout}
	flag.StringVar(&cfg.BinDir, "bin", "bin", "directory of the built binaries (make build)")
	flag.StringVar(&cfg.DatabaseURL, "database-url", tooldb.BaseURL(), "PostgreSQL to use (TEST_DATABASE_URL)")
	flag.StringVar(&cfg.Schema, "schema", "spool_faults", "schema the run drops and creates")
	flag.IntVar(&cfg.N, "n", 200_000, "commands to send")
	flag.IntVar(&cfg.UploadSize, "upload-size", 2_000, "commands per upload")
	flag.IntVar(&cfg.Clients, "clients", 4, "uploads in flight at a time")
	flag.Float64Var(&cfg.Rate, "rate", 4_000, "commands/s the clients send, in all")
	seed := flag.Uint64("seed", 0, "seed of the workload and the faults (0: a new one, printed)")
	flag.IntVar(&cfg.Partitions, "partitions", 6, "partitions of the commands topic")
	flag.IntVar(&cfg.Processors, "processors", 3, "processors at the start")
	flag.IntVar(&cfg.ProcessorKills, "processor-kills", 20, "processors SIGKILLed (and restarted)")
	flag.IntVar(&cfg.Rebalances, "rebalances", 4, "processors added, and as many removed")
	flag.IntVar(&cfg.IngressKills, "ingress-kills", 10, "ingress SIGKILLs mid-upload (and restarts)")
	flag.IntVar(&cfg.PostgresFaults, "postgres-faults", 6, "PostgreSQL restarts (half, when -postgres-restart is set) and backend terminations")
	flag.StringVar(&cfg.PostgresRestart, "postgres-restart", "", "shell command that restarts PostgreSQL (empty: terminate backends only)")
	flag.IntVar(&cfg.BrokerKills, "broker-kills", 5, "broker SIGKILLs (and restarts on the same data)")
	flag.IntVar(&cfg.Slowdowns, "slowdowns", 2, "stretches of 4-8 s in which every write statement waits 0.2-0.6 s first")
	flag.IntVar(&cfg.Freezes, "freezes", 2, "processors frozen (SIGSTOP) 12-14 s, past their session timeout, then let go on")
	flag.IntVar(&cfg.Cuts, "cuts", 2, "processors cut off from the broker 12-14 s, past their session timeout (a network partition: their connections go silent; PostgreSQL stays reachable), then let back")
	flag.Float64Var(&cfg.Alone, "alone", 0.5, "share of the faults injected alone: once every earlier one was followed by a write, and the next only once this one was")
	flag.IntVar(&cfg.Exhaustions, "exhaustions", 2, "stretches of 2-5 s in which another client holds every PostgreSQL connection (spool's ended)")
	maxRSS := flag.Int64("max-rss", 384, "fail the run when a processor's peak RSS passes this many MiB (0: no bound)")
	flag.Float64Var(&cfg.RateLimit, "rate-limit", 5_000, "each processor's processor.rate_limit, checked against the audit's busiest 5 s (0: none)")
	verbose := flag.Bool("v", false, "log each fault and each resend as it happens, and the processes at level info")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the run's directory (broker data, process logs)")
	flag.DurationVar(&cfg.MaxStall, "max-stall", 30*time.Second, "fail the run when the processors commit nothing for longer while records wait (0: no bound)")
	flag.Parse()
	if *verbose {
		cfg.Log = os.Stderr
	}
	cfg.Seed = *seed
	cfg.MaxRSS = *maxRSS << 20
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := faults.Run(ctx, cfg); err != nil {
		// The cause comes first, the processes' logs after it; the cause
		// is repeated last, where a CI log's tail shows it.
		cause, _, _ := strings.Cut(err.Error(), "\n")
		fmt.Fprintf(os.Stderr, "spool-faults (seed %d): %v\nspool-faults (seed %[1]d) failed: %s\n", cfg.Seed, err, cause)
		return 1
	}
	return 0
}
