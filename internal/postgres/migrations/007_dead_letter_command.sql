-- A dead letter must fit its topic, so one whose value does not is sent cut
-- (spool-dlq-value-truncated); the whole command is then kept here, with
-- its failure, so that nothing is lost and a replay can send it. Every
-- dead-lettered failure also keeps the SHA-256 of the value it was
-- dead-lettered with: a replay checks a dead letter against it, so that a
-- record forged into the dead-letter topic under a genuine dead letter's
-- headers is refused.
ALTER TABLE spool_job_failures ADD COLUMN command bytea, ADD COLUMN value_sha256 bytea;
