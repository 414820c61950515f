-- The ledger's ids compare byte by byte (COLLATE "C"): equality is the
-- same in every collation, and the order only has to be one order, so a
-- locale's comparison, which copies both strings and calls strcoll for each
-- key compared, bought nothing on the busiest index spool writes. The
-- claim sorts its ids the same way. Changing a column's collation keeps
-- the table but rebuilds its primary key, under an exclusive lock: on a
-- large ledger, expect the migration to take a while.
ALTER TABLE spool_ledger
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN command_id TYPE text COLLATE "C";
