WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.ver, json_build_array((u.a0::text)::text)::text AS spool_key FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(a0, ver, spool_ord)),
			d AS (DELETE FROM "public"."customers" t USING v WHERE t."customer_id" = v.a0 AND t."version" < v.ver),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT $3::text, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version)
			SELECT v.spool_ord FROM v
			WHERE EXISTS (SELECT 1 FROM "public"."customers" t WHERE t."customer_id" = v.a0 AND t."version" >= v.ver) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $3::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $3::text AND x.key = json_build_array((v.a0::text)::text)::text AND x.version >= v.ver))
