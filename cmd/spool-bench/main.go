// Command spool-bench measures spool against this machine's limits, side by
// side in one run; see docs/benchmarks.md. `make bench` builds the binaries
// it runs and starts it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spoolhq/spool/internal/tools/bench"
	"github.com/spoolhq/spool/internal/tools/tooldb"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := bench.Config{Out: os.Stdout}
	flag.StringVar(&cfg.BinDir, "bin", "bin", "directory of the built binaries (make build)")
	flag.StringVar(&cfg.DatabaseURL, "database-url", tooldb.BaseURL(), "PostgreSQL to use (TEST_DATABASE_URL)")
	flag.StringVar(&cfg.Schema, "schema", "spool_bench", "schema the run drops and creates")
	flag.IntVar(&cfg.N, "n", 1_000_000, "commands in the workload")
	upload := flag.Int64("upload-mib", 1024, "least size of the ingress stage's upload, in MiB")
	flag.IntVar(&cfg.NaiveN, "naive-n", 20_000, "records the naive per-record consumer writes (it is slow)")
	flag.Float64Var(&cfg.LatencyRate, "latency-rate", 20_000, "commands/s of the latency stage's steady uploads")
	flag.DurationVar(&cfg.LatencyFor, "latency-for", 10*time.Second, "how long the latency stage uploads")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "workload seed")
	flag.IntVar(&cfg.Partitions, "partitions", 12, "partitions of the topics")
	flag.IntVar(&cfg.Processors, "processors", 1, "processors of the processor stages' drain")
	flag.StringVar(&cfg.Stages, "stages", bench.StagesAll, "stages to run: all, write (the write path: backlog, references, naive consumer, processor) processor (the backlog and the processor's drain), latency (the latency stage alone, on empty tables) or ingress (the upload, produced straight and through ingress)")
	flag.Float64Var(&cfg.MaxCPURatio, "max-cpu-ratio", 0, "fail when the processor's steady drain costs more CPU per command, its own and PostgreSQL's, than this many times the best reference's (0: no bound)")
	flag.BoolVar(&cfg.Results, "results", false, "the backlog's job keeps each command's outcome (?results=true), to measure its cost")
	flag.StringVar(&cfg.Profile, "profile", "", "directory for the drain's processor CPU profile; also samples PostgreSQL's wait events")
	flag.Parse()
	cfg.UploadBytes = *upload << 20
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "spool-bench:", err)
		if errors.Is(err, bench.ErrOverCPUBound) {
			return 3 // measured and checked, but too costly: CI measures once more
		}
		return 1
	}
	return 0
}
