WITH v AS (SELECT u.spool_ord, u.a0::bigint AS a0 FROM unnest($1::text[]) WITH ORDINALITY AS u(a0, spool_ord)) DELETE FROM "public"."counters" t USING v WHERE t."id" = v.a0
