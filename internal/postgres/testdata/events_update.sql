WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.a1::uuid AS a1, u.a2::timestamp(3) with time zone AS a2, u.a3::jsonb AS a3, u.ver FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS u(a0, a1, a2, a3, ver, spool_ord)),
			l AS (SELECT v.* FROM "Sales Data"."Events" t JOIN v ON t."tenant" = v.a0 AND t."event_id" = v.a1 ORDER BY v.a0, v.a1 FOR UPDATE OF t),
			w AS (UPDATE "Sales Data"."Events" t SET "at" = l.a2, "payload" = l.a3, "rev" = l.ver FROM l WHERE t."tenant" = l.a0 AND t."event_id" = l.a1 AND t."rev" < l.ver RETURNING l.spool_ord)
			SELECT v.spool_ord, CASE WHEN v.spool_ord IN (SELECT spool_ord FROM l) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $6::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $6::text AND x.key = json_build_array((v.a0::text)::text, (v.a1::uuid)::text)::text AND x.version >= v.ver)) THEN 'stale' ELSE 'missing' END FROM v
			WHERE v.spool_ord NOT IN (SELECT spool_ord FROM w)
