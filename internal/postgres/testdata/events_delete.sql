WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.a1::uuid AS a1, u.ver, json_build_array((u.a0::text)::text, (u.a1::uuid)::text)::text AS spool_key FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(a0, a1, ver, spool_ord)),
			d AS (DELETE FROM "Sales Data"."Events" t USING v WHERE t."tenant" = v.a0 AND t."event_id" = v.a1 AND t."rev" < v.ver),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT $4::text, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version)
			SELECT v.spool_ord FROM v
			WHERE EXISTS (SELECT 1 FROM "Sales Data"."Events" t WHERE t."tenant" = v.a0 AND t."event_id" = v.a1 AND t."rev" >= v.ver) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $4::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $4::text AND x.key = json_build_array((v.a0::text)::text, (v.a1::uuid)::text)::text AND x.version >= v.ver))
