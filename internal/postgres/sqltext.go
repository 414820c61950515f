package postgres

import (
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// sqlText is a name or a type as it may stand in a statement built at run
// time: the only way either enters one. A name is quoted (ident, table); a
// type is as PostgreSQL's format_type printed it for the catalog, which
// quotes what must be, and is checked at start-up to be a type name and
// nothing else (typeName). What spool writes itself — keywords, aliases,
// placeholders — stays plain text.
type sqlText string

// ident quotes a schema, table or column name.
func ident(name string) sqlText { return sqlText(pgx.Identifier{name}.Sanitize()) }

// idents quotes each name.
func idents(names []string) []sqlText {
	out := make([]sqlText, len(names))
	for i, n := range names {
		out[i] = ident(n)
	}
	return out
}

// table is an entity's table, schema-qualified.
func table(e *pipeline.Entity) sqlText { return ident(e.Schema) + "." + ident(e.Table) }

// castType is the type a column's text values are cast to (its base type,
// modifier and all; pipeline.Column.CastType).
func castType(c pipeline.Column) sqlText { return sqlText(c.CastType) }

// columnType is a column's own type (pipeline.Column.Type).
func columnType(c pipeline.Column) sqlText { return sqlText(c.Type) }

// join joins fragments with sep.
func join(parts []sqlText, sep string) sqlText {
	s := make([]string, len(parts))
	for i, p := range parts {
		s[i] = string(p)
	}
	return sqlText(strings.Join(s, sep))
}

// printedType matches what format_type prints: words, digits, spaces,
// dots, commas, parentheses and brackets (character varying(3),
// timestamp(3) with time zone, numeric(18,2)[]), and quoted identifiers
// ("My Type", with "" for a quote).
var printedType = regexp.MustCompile(`^(?:[A-Za-z0-9_ .,()\[\]]|"(?:[^"]|"")*")+$`)

// typeName reports whether t can stand in a statement as a type.
func typeName(t string) bool { return printedType.MatchString(t) }
