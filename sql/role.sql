-- A least-privilege role for `spout run`: it may stream changes (REPLICATION) and read
-- the outbox, nothing else. Create the publication and slot once as the table owner
-- (`spout setup`), then run Spout as this role. Replace the password.
CREATE ROLE spout LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO spout;
GRANT SELECT ON public.outbox TO spout;
-- Where Spout remembers the slots it created, so that a lost slot is refused instead of
-- silently recreated (`spout setup` creates the same table; `spout setup --print` shows it).
CREATE TABLE IF NOT EXISTS public.spout_slots (
  slot_name     text PRIMARY KEY,
  created_at    timestamptz NOT NULL DEFAULT now(),
  created_lsn   pg_lsn,
  confirmed_lsn pg_lsn,
  seen_at       timestamptz
);
GRANT SELECT, INSERT, UPDATE ON public.spout_slots TO spout;
-- pg_hba.conf must allow the role to connect to the database (replication=database
-- connections match ordinary database lines, not "replication" lines), e.g.
--   host  mydb  spout  10.0.0.0/8  scram-sha-256
