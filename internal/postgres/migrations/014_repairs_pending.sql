-- A committed batch whose repair (rows behind tombstones, repair.go) has
-- not run yet: written in the batch's transaction, deleted with the repair
-- that follows its commit, or, when that failed, by the periodic sweep once
-- it has repaired every tombstone. A job listed here is not settled
-- completed: its rows may still hold one that a newer delete removes.
CREATE TABLE spool_repairs_pending (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    jobs           text[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, next_offset)
);
