WITH v AS (SELECT u.spool_ord, u.a0::bigint AS a0, u.a1::bigint AS a1 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(a0, a1, spool_ord)),
			l AS (SELECT v.* FROM "public"."counters" t JOIN v ON t."id" = v.a0 ORDER BY v.a0 FOR UPDATE OF t),
			w AS (UPDATE "public"."counters" t SET "n" = l.a1 FROM l WHERE t."id" = l.a0 RETURNING l.spool_ord)
			SELECT v.spool_ord, CASE WHEN false THEN 'stale' ELSE 'missing' END FROM v
			WHERE v.spool_ord NOT IN (SELECT spool_ord FROM w)
