WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.a1::uuid AS a1, u.a2::timestamp(3) with time zone AS a2, u.a3::jsonb AS a3, u.ver FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS u(a0, a1, a2, a3, ver, spool_ord)),
			w AS (INSERT INTO "Sales Data"."Events" AS t ("tenant", "event_id", "at", "payload", "rev") SELECT v.a0, v.a1, v.a2, v.a3, v.ver FROM v WHERE NOT (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $6::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $6::text AND x.key = json_build_array((v.a0::text)::text, (v.a1::uuid)::text)::text AND x.version >= v.ver)) ORDER BY v.a0, v.a1 ON CONFLICT ("tenant", "event_id") DO NOTHING RETURNING t."tenant", t."event_id")
			SELECT v.spool_ord, CASE WHEN EXISTS (SELECT 1 FROM "Sales Data"."Events" t WHERE t."tenant" = v.a0 AND t."event_id" = v.a1 AND t."rev" >= v.ver) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $6::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $6::text AND x.key = json_build_array((v.a0::text)::text, (v.a1::uuid)::text)::text AND x.version >= v.ver)) THEN 'stale' ELSE 'exists' END FROM v
			WHERE NOT EXISTS (SELECT 1 FROM w WHERE w."tenant" = v.a0 AND w."event_id" = v.a1)
