WITH v AS (SELECT u.a0::text AS a0, u.a1::uuid AS a1, json_build_array((u.a0::text)::text, (u.a1::uuid)::text)::text AS spool_key FROM unnest($1::text[], $2::text[]) AS u(a0, a1)
				WHERE EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $3)
				AND (EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $3
						AND l.xid >= pg_snapshot_xmax($4::pg_snapshot) AND l.xid <> $5::xid8)
					OR EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $3
						AND l.xid = ANY (ARRAY(SELECT pg_snapshot_xip($4::pg_snapshot))) AND l.xid <> $5::xid8)))
			DELETE FROM "Sales Data"."Events" t USING v, spool_tombstones x
			WHERE x.target = $3 AND x.key = v.spool_key AND t."tenant" = v.a0 AND t."event_id" = v.a1 AND t."rev" < x.version
