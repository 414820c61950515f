-- A part that ends after some of its records reached Kafka keeps a row:
-- 'done' when received whole, 'refused' when refused for what it holds
-- (final: those records count), 'broken' when cut off (to be sent again
-- with the same bytes). A refused or broken part says why.
ALTER TABLE spool_job_parts ADD COLUMN error text;
