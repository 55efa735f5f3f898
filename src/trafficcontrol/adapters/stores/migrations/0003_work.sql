-- Workers on other machines (tc worker) and the attempts the leader queues for them.
-- Applied by trafficcontrol.adapters.stores.pg_schema.migrate in one transaction.

CREATE TABLE workers (
    host_id    text        PRIMARY KEY,
    projects   text[]      NOT NULL,
    max_agents integer     NOT NULL,
    running    integer     NOT NULL DEFAULT 0,
    version    text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per attempt queued for a worker: queued -> running (claimed) -> done.
-- request/result: the AgentRequest/AgentResult as msgspec JSON. seen_at: the worker's
-- last heartbeat for it (the store's clock decides who is silent). stop: a stop the
-- leader asked for (its reason).
CREATE TABLE work (
    attempt_id text        PRIMARY KEY,
    project    text        NOT NULL,
    backend    text        NOT NULL,
    log_path   text        NOT NULL UNIQUE,
    request    bytea       NOT NULL,
    epoch      bigint      NOT NULL,
    state      text        NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    worker     text,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at timestamptz,
    seen_at    timestamptz,
    stop       text,
    result     bytea
);
CREATE INDEX work_queued ON work (queued_at) WHERE state = 'queued';

-- What a worker's agents reported, in order per attempt (n = 1, 2, ...).
CREATE TABLE work_reports (
    attempt_id text    NOT NULL REFERENCES work (attempt_id) ON DELETE CASCADE,
    n          integer NOT NULL CHECK (n > 0),
    body       bytea   NOT NULL,
    PRIMARY KEY (attempt_id, n)
);
