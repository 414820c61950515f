-- Jobs still receiving, by their last heartbeat, for finding the uploads an
-- ingress abandoned when it died.
CREATE INDEX spool_jobs_receiving ON spool_jobs (updated_at) WHERE state = 'receiving';
