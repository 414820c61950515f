package app

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// ingressRefreshEvery bounds how often ingress reads one entity's table
// again: an upload of commands naming a column the table truly lacks costs
// one catalog query an entity this often, not one a command. (The
// processor reads it again whenever a batch asks: at most once a batch and
// attempt, and a command is dead-lettered for a column only after a
// reading that began after it failed.)
const ingressRefreshEvery = time.Second

// entityCatalog is a binary's entities: read from the database at start,
// again for one entity when a command or a statement finds its table
// changed (Refresh), and all of them when the configuration is reloaded
// (Reload, on SIGHUP).
type entityCatalog struct {
	*pipeline.Catalog
	db     *postgres.DB
	logger *slog.Logger

	mu    sync.Mutex
	specs map[string]postgres.EntitySpec
	epoch int                  // moves with each Reload, so that a refresh begun before it is dropped
	last  map[string]time.Time // each entity's last refresh
}

func newEntityCatalog(db *postgres.DB, specs []postgres.EntitySpec, es pipeline.Entities, logger *slog.Logger) *entityCatalog {
	c := &entityCatalog{Catalog: pipeline.NewCatalog(es), db: db, logger: logger, last: map[string]time.Time{}}
	c.setSpecs(specs)
	return c
}

func (c *entityCatalog) setSpecs(specs []postgres.EntitySpec) {
	c.specs = make(map[string]postgres.EntitySpec, len(specs))
	for _, s := range specs {
		c.specs[s.Name] = s
	}
}

// refresher is an entityCatalog that reads an entity's table again only
// if it was not read for every (httpapi.Catalog's Refresh).
type refresher struct {
	*entityCatalog
	every time.Duration
}

// Refresh implements httpapi.Catalog.
func (r refresher) Refresh(ctx context.Context, entity string) bool {
	return r.refresh(ctx, entity, r.every)
}

// refresh reads entity's table again, unless it was read less than minAge
// ago, and reports whether the entity changed.
func (c *entityCatalog) refresh(ctx context.Context, entity string, minAge time.Duration) bool {
	c.mu.Lock()
	spec, ok := c.specs[entity]
	if !ok || time.Since(c.last[entity]) < minAge {
		c.mu.Unlock()
		return false
	}
	c.last[entity] = time.Now()
	epoch := c.epoch
	c.mu.Unlock()
	es, err := postgres.LoadEntities(ctx, c.db, []postgres.EntitySpec{spec})
	if err != nil {
		c.logger.Warn("reading an entity's table again", "entity", entity, "error", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != epoch {
		return false // a reload came meanwhile, with what the configuration says now
	}
	changed := c.Update(es[entity])
	if changed {
		c.logger.Info("entity's table changed: its columns read again", "entity", entity, "columns", len(es[entity].Columns))
	}
	return changed
}

// Reload reads every entity of specs (the configuration read again) and
// makes them the catalog; on an error the catalog stays as it was.
func (c *entityCatalog) Reload(ctx context.Context, specs []postgres.EntitySpec) error {
	es, err := postgres.LoadEntities(ctx, c.db, specs)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setSpecs(specs)
	c.epoch++
	c.Replace(es)
	return nil
}

// reloadOnSIGHUP reads the configuration again on each SIGHUP and makes
// its entities the catalog (read from the database anew), until ctx ends.
// Only the entities change: any other key takes a restart.
func (c *entityCatalog) reloadOnSIGHUP(ctx context.Context, cfg *config.Config) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			c.reload(ctx, cfg)
		}
	}
}

// reload reads the configuration again and its entities from the database.
func (c *entityCatalog) reload(ctx context.Context, cfg *config.Config) {
	next, err := cfg.Reload()
	if err != nil {
		c.logger.Error("SIGHUP: reading the configuration again; the entities stay as they were", "error", err)
		return
	}
	specs, err := entitySpecs(next.Entities)
	if err == nil {
		err = c.Reload(ctx, specs)
	}
	if err != nil {
		c.logger.Error("SIGHUP: loading the entities again; they stay as they were", "error", err)
		return
	}
	c.logger.Info("SIGHUP: entities loaded again (other configuration changes take a restart)", "entities", c.Entities().Names())
}
