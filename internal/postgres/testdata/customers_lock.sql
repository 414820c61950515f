SELECT count(*) FROM (SELECT 1 FROM "public"."customers" t JOIN (SELECT u.a0::text AS a0 FROM unnest($1::text[]) AS u(a0)) v ON t."customer_id" = v.a0
			ORDER BY v.a0 FOR UPDATE OF t) l
