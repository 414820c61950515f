WITH v AS (SELECT u.spool_ord, u.a0::bigint AS a0 FROM unnest($1::text[]) WITH ORDINALITY AS u(a0, spool_ord)),
			l AS (SELECT v.* FROM "public"."counters" t JOIN v ON t."id" = v.a0 ORDER BY v.a0 FOR UPDATE OF t),
			w AS (SELECT l.spool_ord FROM l)
			SELECT v.spool_ord, CASE WHEN false THEN 'stale' ELSE 'missing' END FROM v
			WHERE v.spool_ord NOT IN (SELECT spool_ord FROM w)
