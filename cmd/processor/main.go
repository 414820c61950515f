package main

import (
	"log/slog"
	"os"

	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/config"
)

func main() {
	os.Exit(app.Main("processor", []string{"metrics.addr", "database.url", "kafka.brokers", "processor.rate_limit"},
		func(c *config.Config, l *slog.Logger) (app.Runner, error) { return app.NewProcessor(c, l) }))
}
