-- Results per command, for the jobs uploaded with them (?results=true):
-- each command's outcome by its place in the upload. Written by the batch
-- that settles the command, in its transaction; a replay's move updates
-- the row with the count. Rejected records are listed from the failures.
ALTER TABLE spool_jobs ADD COLUMN results boolean NOT NULL DEFAULT false;

CREATE TABLE spool_job_results (
    job_id     text NOT NULL,
    idx        bigint NOT NULL,
    command_id text NOT NULL,
    outcome    text NOT NULL,
    PRIMARY KEY (job_id, idx)
);
