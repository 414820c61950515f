-- Inserts and updates (ops that apply only when the row is absent, or
-- present) end as exists or missing when they do not; a job's abort ends its
-- commands not yet applied as aborted. Each outcome is counted per job and
-- partition as the others are. ("exists" is a keyword: always quoted.)
ALTER TABLE spool_job_counts
    ADD COLUMN "exists" bigint NOT NULL DEFAULT 0,
    ADD COLUMN missing  bigint NOT NULL DEFAULT 0,
    ADD COLUMN aborted  bigint NOT NULL DEFAULT 0;
