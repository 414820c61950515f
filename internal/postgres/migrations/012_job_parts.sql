-- Jobs uploaded in parts: a job opened for parts is 'open' until completed,
-- and each part it received is a row: 'receiving' while it streams (its
-- ingress refreshes updated_at), then 'done' with its counts and the
-- SHA-256 of its (decoded) body. A part whose upload failed leaves no row.
ALTER TABLE spool_jobs ADD COLUMN parts boolean NOT NULL DEFAULT false;
CREATE INDEX spool_jobs_open_parts ON spool_jobs (updated_at) WHERE state = 'open';

CREATE TABLE spool_job_parts (
    job_id     text NOT NULL,
    part       integer NOT NULL,
    state      text NOT NULL,
    received   bigint NOT NULL DEFAULT 0,
    accepted   bigint NOT NULL DEFAULT 0,
    rejected   bigint NOT NULL DEFAULT 0,
    sha256     bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, part)
);
