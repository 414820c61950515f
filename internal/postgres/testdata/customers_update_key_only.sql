WITH v AS (SELECT u.spool_ord, u.a0::text AS a0, u.ver FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(a0, ver, spool_ord)),
			l AS (SELECT v.* FROM "public"."customers" t JOIN v ON t."customer_id" = v.a0 ORDER BY v.a0 FOR UPDATE OF t),
			w AS (UPDATE "public"."customers" t SET "version" = l.ver FROM l WHERE t."customer_id" = l.a0 AND t."version" < l.ver RETURNING l.spool_ord)
			SELECT v.spool_ord, CASE WHEN v.spool_ord IN (SELECT spool_ord FROM l) OR (EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $3::text)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = $3::text AND x.key = json_build_array((v.a0::text)::text)::text AND x.version >= v.ver)) THEN 'stale' ELSE 'missing' END FROM v
			WHERE v.spool_ord NOT IN (SELECT spool_ord FROM w)
