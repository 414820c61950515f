-- Each transaction that wrote tombstones, by its id and target. A batch
-- that wrote rows of a target repairs them after its commit (repair.go)
-- only when a delete its statements could not see (not visible in the
-- snapshot it took before them) has committed by then: most batches of a
-- table that has tombstones then skip probing their keys among them.
-- Triggers on spool_tombstones keep it, so that every writer of tombstones
-- logs itself, a processor of an older version during a rolling upgrade
-- too. Forgotten after the dedupe window, as tombstones are; the look-up
-- reads only ids at or past a snapshot's xmin.
CREATE TABLE spool_delete_log (
    target    text NOT NULL,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    logged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spool_delete_log_target_xid ON spool_delete_log (target, xid);

CREATE FUNCTION spool_log_deletes() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO spool_delete_log (target) SELECT DISTINCT target FROM written;
    RETURN NULL;
END $$;
CREATE TRIGGER spool_log_inserted_tombstones AFTER INSERT ON spool_tombstones
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION spool_log_deletes();
CREATE TRIGGER spool_log_updated_tombstones AFTER UPDATE ON spool_tombstones
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION spool_log_deletes();
