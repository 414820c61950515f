WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.a1::numeric(18,2) AS a1, u.a2::character varying(40) AS a2, u.ver FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(a0, a1, a2, ver, spool_ord)),
			w AS (INSERT INTO "public"."customers" AS t ("customer_id", "balance", "name", "version") SELECT v.a0, v.a1, v.a2, v.ver FROM v WHERE NOT (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $5::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $5::text AND x.key = json_build_array((v.a0::text)::text)::text AND x.version >= v.ver)) ORDER BY v.a0 ON CONFLICT ("customer_id") DO NOTHING RETURNING t."customer_id")
			SELECT v.spool_ord, CASE WHEN EXISTS (SELECT 1 FROM "public"."customers" t WHERE t."customer_id" = v.a0 AND t."version" >= v.ver) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $5::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $5::text AND x.key = json_build_array((v.a0::text)::text)::text AND x.version >= v.ver)) THEN 'stale' ELSE 'exists' END FROM v
			WHERE NOT EXISTS (SELECT 1 FROM w WHERE w."customer_id" = v.a0)
