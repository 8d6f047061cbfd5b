-- The publication Spout streams (what `spout setup` creates; `spout setup --print` shows
-- the idempotent form). Inserts only: deleting processed rows is cleanup, not an event.
-- CREATE PUBLICATION needs ownership of the table: run it as the table's owner.
CREATE PUBLICATION spout FOR TABLE public.outbox WITH (publish = 'insert', publish_via_partition_root = true);

-- The slot is created by `spout setup` or on the first `spout run`, or by hand:
--   SELECT pg_create_logical_replication_slot('spout', 'pgoutput');
-- A slot keeps WAL until Spout confirms it: watch `spout status` (WAL held back), and set
-- max_slot_wal_keep_size so a forgotten slot cannot fill the disk.
