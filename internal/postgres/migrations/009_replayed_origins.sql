-- A dead letter that a replay applied moves its count out of dead_lettered
-- and its failure row goes. Kafka may still deliver the original record
-- again (a producer's resend): that copy must count nowhere, whether it
-- fails as before or not. The places of the moved dead letters are kept,
-- per job and index, so that such a copy is told as redelivered.
CREATE TABLE spool_job_replays (
    job_id text NOT NULL,
    idx    bigint NOT NULL,
    PRIMARY KEY (job_id, idx)
);
