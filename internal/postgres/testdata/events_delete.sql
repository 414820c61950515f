WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.a1::uuid AS a1, u.ver, json_build_array((u.a0::text)::text, (u.a1::uuid)::text)::text AS spool_key FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(a0, a1, ver, spool_ord)),
			l AS (SELECT v.* FROM "Sales Data"."Events" t JOIN v ON t."tenant" = v.a0 AND t."event_id" = v.a1 ORDER BY v.a0, v.a1 FOR UPDATE OF t),
			d AS (DELETE FROM "Sales Data"."Events" t USING l WHERE t."tenant" = l.a0 AND t."event_id" = l.a1 AND t."rev" < l.ver RETURNING l.spool_ord),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT $4::text, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version
				RETURNING x.key)
			SELECT v.spool_ord FROM v
			WHERE (v.spool_ord IN (SELECT spool_ord FROM l) AND v.spool_ord NOT IN (SELECT spool_ord FROM d))
				OR NOT EXISTS (SELECT 1 FROM ts WHERE ts.key = v.spool_key)
