-- The worker registry: each worker process (Rust or language) records who
-- it is when it starts and heartbeats while it runs; GET /v1/workers reads
-- it. Rows of workers unseen for a week are removed as new ones register.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

CREATE TABLE sg_workers (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    language text NOT NULL,
    namespaces text[] NOT NULL,
    handlers text[] NOT NULL,
    concurrency integer NOT NULL,
    heartbeat_ms bigint NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at timestamptz
);
CREATE INDEX sg_workers_heartbeat ON sg_workers (heartbeat_at);
