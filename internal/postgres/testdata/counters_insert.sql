WITH v AS (SELECT u.spool_ord, u.a0::bigint AS a0, u.a1::bigint AS a1 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(a0, a1, spool_ord)),
			w AS (INSERT INTO "public"."counters" AS t ("id", "n") SELECT v.a0, v.a1 FROM v WHERE NOT false ORDER BY v.a0 ON CONFLICT ("id") DO NOTHING RETURNING t."id")
			SELECT v.spool_ord, CASE WHEN false THEN 'stale' ELSE 'exists' END FROM v
			WHERE NOT EXISTS (SELECT 1 FROM w WHERE w."id" = v.a0)
