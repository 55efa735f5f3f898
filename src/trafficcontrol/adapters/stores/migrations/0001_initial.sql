-- The journal (events), its head, and the inbox of requests from other processes.
-- Applied by trafficcontrol.adapters.stores.pg_schema.migrate in one transaction.

-- One row: the last sequence number, and what appenders serialise on. An append
-- locks it (UPDATE ... seq = seq + n), so sequence numbers are handed out and
-- committed in order, without holes. run_state mirrors the last
-- orchestrator_started/stopped event (PostgresJournal.last_run_clean); last_append
-- is the id of the last committed append (resolving one whose commit was in doubt).
CREATE TABLE journal_head (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq         bigint  NOT NULL DEFAULT 0 CHECK (seq >= 0),
    run_state   text    CHECK (run_state IN ('running', 'stopped')),
    last_append bytea
);
INSERT INTO journal_head DEFAULT VALUES;

-- body: the event as msgspec JSON (adapters/stores/codec.py), byte for byte as
-- SQLite stores it; convert_from(body, 'UTF8')::jsonb reads it in psql.
CREATE TABLE events (
    seq   bigint           PRIMARY KEY CHECK (seq > 0),
    epoch bigint           NOT NULL,
    at    double precision NOT NULL,
    type  text             NOT NULL,
    body  bytea            NOT NULL
);

CREATE TABLE requests (
    id      bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind    text    NOT NULL,
    body    bytea   NOT NULL,
    taken   boolean NOT NULL DEFAULT false,
    ok      boolean,
    message text,
    details jsonb
);
-- The inbox is polled several times a second: an empty one costs one probe of this
-- (normally empty) index, never a scan of answered requests.
CREATE INDEX requests_untaken ON requests (id) WHERE NOT taken;
