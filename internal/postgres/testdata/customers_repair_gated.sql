WITH v AS (SELECT u.a0::text AS a0, json_build_array((u.a0::text)::text)::text AS spool_key FROM unnest($1::text[]) AS u(a0)
				WHERE EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $2)
				AND (EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $2
						AND l.xid >= pg_snapshot_xmax($3::pg_snapshot) AND l.xid <> $4::xid8)
					OR EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $2
						AND l.xid = ANY (ARRAY(SELECT pg_snapshot_xip($3::pg_snapshot))) AND l.xid <> $4::xid8)))
			DELETE FROM "public"."customers" t USING v, spool_tombstones x
			WHERE x.target = $2 AND x.key = v.spool_key AND t."customer_id" = v.a0 AND t."version" < x.version
