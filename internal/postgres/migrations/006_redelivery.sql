-- A record Kafka delivers twice (a producer's resend after a broker failed
-- before acknowledging) must count once. The ledger keeps the origin (job
-- and index, in 64 bits) of the record that claimed each id, so that a
-- second delivery of that record is told from a client's repeat; duplicates
-- are remembered per job and index, as failures already are.
ALTER TABLE spool_ledger ADD COLUMN origin bigint;
CREATE TABLE spool_job_repeats (
    job_id text NOT NULL,
    idx    bigint NOT NULL,
    PRIMARY KEY (job_id, idx)
);
