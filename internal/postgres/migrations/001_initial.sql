-- spool's own tables live in the connection's current schema (search_path),
-- so that one database can hold several spool installations or test runs.

CREATE TABLE spool_jobs (
    job_id       text PRIMARY KEY,
    tenant       text NOT NULL,
    state        text NOT NULL,
    received     bigint NOT NULL DEFAULT 0,
    accepted     bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX spool_jobs_tenant_created ON spool_jobs (tenant, created_at DESC, job_id DESC);
CREATE INDEX spool_jobs_open ON spool_jobs (job_id) WHERE state IN ('queued', 'processing');

-- One row per job and partition: each partition's worker updates only its
-- own rows, so counting never contends on a hot row. Reads sum them.
CREATE TABLE spool_job_counts (
    job_id        text NOT NULL,
    partition     integer NOT NULL,
    applied       bigint NOT NULL DEFAULT 0,
    duplicate     bigint NOT NULL DEFAULT 0,
    stale         bigint NOT NULL DEFAULT 0,
    conflict      bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, partition)
);

CREATE TABLE spool_job_failures (
    job_id      text NOT NULL,
    idx         bigint NOT NULL,
    command_id  text NOT NULL,
    stage       text NOT NULL,
    error_class text NOT NULL,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx)
);

-- The dedupe ledger: a command id is claimed in the same transaction that
-- applies it. Ids are scoped per tenant.
CREATE TABLE spool_ledger (
    tenant       text NOT NULL,
    command_id   text NOT NULL,
    payload_hash bytea NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, command_id)
);
CREATE INDEX spool_ledger_claimed_at ON spool_ledger USING brin (claimed_at);

-- Consumed offsets: the source of truth for where each partition resumes.
CREATE TABLE spool_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Tombstones of versioned deletes: without them an older upsert arriving
-- after a delete (on another partition, or replayed) would bring the row
-- back. An upsert is applied only if its version is newer than the row's
-- and the key's tombstone's.
CREATE TABLE spool_tombstones (
    target     text NOT NULL,   -- schema.table
    key        text NOT NULL,   -- JSON array of the key values as PostgreSQL prints them
    version    bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key)
);
