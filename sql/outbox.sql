-- The outbox table Spout streams from (DESIGN.md §2). Column names are Spout's defaults
-- (Debezium-compatible where Debezium has one); others can be mapped with --*-column flags.
--
-- Applications insert events here in the same transaction as their business change:
--   BEGIN;
--   UPDATE orders SET status = 'paid' WHERE id = 42;
--   INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
--        VALUES ('order', '42', 'OrderPaid', '{"order_id": 42, "amount": 1999}');
--   COMMIT;
--
-- Cleanup: Spout reads events from the WAL, not from the table, so rows need not stay.
--   * Insert and delete in the same transaction: the row never occupies the table, the
--     event is still in the WAL (the publication publishes inserts only, so the delete is
--     not an event):  INSERT ... ; DELETE FROM outbox WHERE id = ...;
--   * Or keep rows for auditing/backfill and drop old ones in batches, e.g. a daily
--     DELETE FROM outbox WHERE created_at < now() - interval '7 days';
--   * For high volume, partition by created_at (PARTITION BY RANGE) and drop whole old
--     partitions (the publication Spout creates has publish_via_partition_root = true,
--     so the partitions' rows arrive as the outbox's).

CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(), -- event id: dedup key for consumers
    aggregate_type text        NOT NULL,                              -- routes to a topic
    aggregate_id   text        NOT NULL,                              -- message key: per-key order
    event_type     text        NOT NULL,                              -- the type header
    payload        jsonb       NOT NULL,                              -- the message value, as stored
    headers        jsonb,                                             -- optional: object of broker headers
    tenant_id      text,                                              -- optional: usable in topic templates
    created_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE public.outbox IS 'Transactional outbox streamed by Spout through logical replication (inserts only).';
