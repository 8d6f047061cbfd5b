-- A least-privilege role for `spout run`: it may stream changes (REPLICATION) and read
-- the outbox, nothing else. Create the publication and slot once as the table owner
-- (`spout setup`), then run Spout as this role. Replace the password.
CREATE ROLE spout LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO spout;
GRANT SELECT ON public.outbox TO spout;
-- pg_hba.conf must allow the role to connect to the database (replication=database
-- connections match ordinary database lines, not "replication" lines), e.g.
--   host  mydb  spout  10.0.0.0/8  scram-sha-256
