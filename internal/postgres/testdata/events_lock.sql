SELECT count(*) FROM (SELECT 1 FROM "Sales Data"."Events" t JOIN (SELECT u.a0::text AS a0, u.a1::uuid AS a1 FROM unnest($1::text[], $2::text[]) AS u(a0, a1)) v ON t."tenant" = v.a0 AND t."event_id" = v.a1
			ORDER BY v.a0, v.a1 FOR UPDATE OF t) l
