package main

import (
	"log/slog"
	"os"

	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/config"
)

func main() {
	os.Exit(app.Main("ingress", []string{"http.addr", "ingress.metrics_addr", "database.url", "kafka.brokers"},
		func(c *config.Config, l *slog.Logger) (app.Runner, error) { return app.NewIngress(c, l) }))
}
