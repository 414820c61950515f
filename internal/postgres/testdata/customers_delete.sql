WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.ver, json_build_array((u.a0::text)::text)::text AS spool_key FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(a0, ver, spool_ord)),
			l AS (SELECT v.* FROM "public"."customers" t JOIN v ON t."customer_id" = v.a0 ORDER BY v.a0 FOR UPDATE OF t),
			d AS (DELETE FROM "public"."customers" t USING l WHERE t."customer_id" = l.a0 AND t."version" < l.ver RETURNING l.spool_ord),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT $3::text, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version
				RETURNING x.key)
			SELECT v.spool_ord FROM v
			WHERE (v.spool_ord IN (SELECT spool_ord FROM l) AND v.spool_ord NOT IN (SELECT spool_ord FROM d))
				OR NOT EXISTS (SELECT 1 FROM ts WHERE ts.key = v.spool_key)
