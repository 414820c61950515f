package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spoolhq/spool/pipeline"
)

// EntitySpec is what the configuration says of an entity; LoadEntities adds
// what the catalog says.
type EntitySpec struct {
	Name          string
	Schema        string
	Table         string
	Key           []string
	VersionColumn string
}

// LoadEntities reads each entity's columns and types from the catalog and
// checks that the table, the key columns (backed by a unique index, which
// ON CONFLICT needs) and the version column exist.
func LoadEntities(ctx context.Context, db *DB, specs []EntitySpec) (pipeline.Entities, error) {
	es := make(pipeline.Entities, len(specs))
	for _, s := range specs {
		e, err := loadEntity(ctx, db.pool, s)
		if err != nil {
			return nil, fmt.Errorf("entity %s: %w", s.Name, err)
		}
		es[s.Name] = e
	}
	return es, nil
}

func loadEntity(ctx context.Context, pool *pgxpool.Pool, s EntitySpec) (*pipeline.Entity, error) {
	// A column's kind, cast type and length come from its base type: a
	// domain's, followed down to the type it is made of, with the modifier
	// (varchar(3)) wherever along the way it was given. An explicit cast to
	// a domain over varchar(3) cuts like one to varchar(3).
	rows, err := pool.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(b.oid, -1), t.typname, t.typcategory, a.attnotnull,
			CASE WHEN t.typname IN ('varchar', 'bpchar') AND b.typmod > 4 THEN b.typmod - 4 ELSE 0 END,
			coalesce((SELECT co.collisdeterministic FROM pg_collation co WHERE co.oid = a.attcollation), true)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		CROSS JOIN LATERAL (
			WITH RECURSIVE d (oid, typmod, depth) AS (
				SELECT a.atttypid, a.atttypmod, 0
				UNION ALL
				SELECT t.typbasetype, CASE WHEN d.typmod = -1 THEN t.typtypmod ELSE d.typmod END, d.depth + 1
				FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype = 'd')
			SELECT oid, typmod FROM d ORDER BY depth DESC LIMIT 1) b
		JOIN pg_type t ON t.oid = b.oid
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
		  AND a.attnum > 0 AND NOT a.attisdropped`, s.Schema, s.Table)
	if err != nil {
		return nil, classify(fmt.Errorf("reading columns of %s.%s: %w", s.Schema, s.Table, err))
	}
	cols := make(map[string]pipeline.Column)
	roundTrips := map[string]bool{} // a column's values print back as written
	for rows.Next() {
		var c pipeline.Column
		var typname string
		var category byte
		var deterministic bool
		if err := rows.Scan(&c.Name, &c.Type, &c.CastType, &typname, &category, &c.NotNull, &c.MaxChars, &deterministic); err != nil {
			return nil, classify(err)
		}
		if !typeName(c.Type) || !typeName(c.CastType) {
			return nil, fmt.Errorf("column %q of %s.%s has type %s, which spool cannot name in a statement", c.Name, s.Schema, s.Table, c.Type)
		}
		c.Kind = kindOf(typname, category)
		cols[c.Name] = c
		roundTrips[c.Name] = c.Kind == pipeline.KindInteger || (deterministic && (typname == "text" || typname == "varchar"))
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("reading columns of %s.%s: %w", s.Schema, s.Table, err))
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s.%s does not exist", s.Schema, s.Table)
	}
	for _, k := range s.Key {
		if _, ok := cols[k]; !ok {
			return nil, fmt.Errorf("key column %q does not exist in %s.%s", k, s.Schema, s.Table)
		}
	}
	if s.VersionColumn != "" {
		c, ok := cols[s.VersionColumn]
		if !ok {
			return nil, fmt.Errorf("version column %q does not exist in %s.%s", s.VersionColumn, s.Schema, s.Table)
		}
		if c.Kind != pipeline.KindInteger {
			return nil, fmt.Errorf("version column %q is %s; it must be an integer type", s.VersionColumn, c.Type)
		}
		if slices.Contains(s.Key, s.VersionColumn) {
			return nil, fmt.Errorf("version column %q cannot be a key column", s.VersionColumn)
		}
	}
	deterministic, err := checkUniqueKey(ctx, pool, s)
	if err != nil {
		return nil, err
	}
	e := &pipeline.Entity{
		Name: s.Name, Schema: s.Schema, Table: s.Table,
		Key: s.Key, VersionColumn: s.VersionColumn, Columns: cols,
		KeysRoundTrip: deterministic,
	}
	for _, k := range s.Key {
		e.KeysRoundTrip = e.KeysRoundTrip && roundTrips[k]
	}
	return e, nil
}

// checkUniqueKey finds the unique indexes on exactly the key columns, which
// ON CONFLICT (key) infers as its arbiters; deterministic reports whether
// all of them compare the key bytewise-equal (no nondeterministic
// collation).
func checkUniqueKey(ctx context.Context, pool *pgxpool.Pool, s EntitySpec) (deterministic bool, err error) {
	rows, err := pool.Query(ctx, `
		SELECT array_agg(a.attname ORDER BY a.attname),
			bool_and(coalesce(co.collisdeterministic, true))
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
		LEFT JOIN pg_collation co ON co.oid = i.indcollation[array_position(i.indkey::int2[], a.attnum) - 1]
		WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
		GROUP BY i.indexrelid`, s.Schema, s.Table)
	if err != nil {
		return false, classify(fmt.Errorf("reading unique indexes of %s.%s: %w", s.Schema, s.Table, err))
	}
	want := slices.Clone(s.Key)
	slices.Sort(want)
	found, deterministic := false, true
	var set []string
	var det bool
	_, err = pgx.ForEachRow(rows, []any{&set, &det}, func() error {
		if slices.Equal(set, want) {
			found, deterministic = true, deterministic && det
		}
		return nil
	})
	if err != nil {
		return false, classify(fmt.Errorf("reading unique indexes of %s.%s: %w", s.Schema, s.Table, err))
	}
	if !found {
		return false, fmt.Errorf("no primary key or unique index on (%s) in %s.%s: upserts need one", strings.Join(s.Key, ", "), s.Schema, s.Table)
	}
	return deterministic, nil
}

func kindOf(typname string, category byte) pipeline.ColumnKind {
	switch typname {
	case "int2", "int4", "int8":
		return pipeline.KindInteger
	case "json", "jsonb":
		return pipeline.KindJSON
	}
	switch category {
	case 'S':
		return pipeline.KindText
	case 'N':
		return pipeline.KindNumeric
	case 'B':
		return pipeline.KindBoolean
	default:
		return pipeline.KindOther
	}
}
