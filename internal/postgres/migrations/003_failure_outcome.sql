-- A failure says how its command ended (rejected, conflict, dead_lettered),
-- so that a replayed dead letter can move its job's count exactly once: the
-- move deletes the dead_lettered row it finds, and finds none the second time.
ALTER TABLE spool_job_failures ADD COLUMN outcome text;
UPDATE spool_job_failures SET outcome = CASE
    WHEN stage = 'ingress' THEN 'rejected'
    WHEN error_class = 'conflict' THEN 'conflict'
    ELSE 'dead_lettered' END;
ALTER TABLE spool_job_failures ALTER COLUMN outcome SET NOT NULL;
