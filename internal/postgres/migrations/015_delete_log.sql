-- Each batch transaction that wrote tombstones for a target, by its
-- transaction id. A batch that wrote rows of the target repairs them after
-- its commit (repair.go) only when a delete its statements could not see
-- (not visible in the snapshot it took before them) has committed by then:
-- most batches of a table that has tombstones then skip probing their keys
-- among them. Forgotten after the dedupe window, as tombstones are; the
-- look-up reads only ids at or past a snapshot's xmin.
CREATE TABLE spool_delete_log (
    target    text NOT NULL,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    logged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spool_delete_log_target_xid ON spool_delete_log (target, xid);
