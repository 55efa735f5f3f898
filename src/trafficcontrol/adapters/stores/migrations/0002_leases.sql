-- Leases with fencing epochs, and the instances sharing this store (issue 13).
-- Applied by trafficcontrol.adapters.stores.pg_schema.migrate in one transaction.

-- One row per shard ('main' unless instances shard by project). A row is never
-- deleted: epoch only grows, across releases, so a fence (shard, holder, epoch) names
-- one leadership forever. Times are the server's clock (clock_timestamp()), never an
-- instance's. holder_pid/holder_since name the holder's lease session: when that
-- backend is gone (the holder died, its connection was cut) the lease may be taken at
-- once instead of at expiry. NULL behind a transaction pooler, where a session is not
-- the holder's.
CREATE TABLE leases (
    shard        text        PRIMARY KEY,
    holder       text        NOT NULL,
    epoch        bigint      NOT NULL CHECK (epoch > 0),
    expires_at   timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL,
    holder_pid   integer,
    holder_since timestamptz
);

-- Heartbeats: each tc run (leader or standby) says what it is and how far it has
-- folded the journal; tc cluster and /readyz read them.
CREATE TABLE instances (
    instance   text        PRIMARY KEY,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    role       text        NOT NULL,
    version    text        NOT NULL,
    seq        bigint      NOT NULL DEFAULT 0,
    details    jsonb       NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
