-- stepgraph schema: durable state and the PostgreSQL queue.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

CREATE TABLE sg_namespaces (
    name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sg_templates (
    namespace text NOT NULL REFERENCES sg_namespaces (name),
    name text NOT NULL,
    version text NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE sg_tasks (
    id uuid PRIMARY KEY,
    namespace text NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    context jsonb NOT NULL,
    state text NOT NULL,
    idempotency_key text UNIQUE,
    priority integer NOT NULL DEFAULT 0,
    result jsonb,
    error jsonb,
    -- Bumped by every orchestration commit: the optimistic per-task lock.
    lock_version bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX sg_tasks_state ON sg_tasks (state);

CREATE TABLE sg_steps (
    id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES sg_tasks (id) ON DELETE CASCADE,
    name text NOT NULL,
    template_step text NOT NULL,
    step_type text NOT NULL,
    handler text NOT NULL,
    config jsonb NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    timeout_seconds double precision,
    batch_size bigint,
    backoff_until timestamptz,
    cursor jsonb,
    outcome jsonb,
    created_at timestamptz NOT NULL,
    UNIQUE (task_id, name)
);
CREATE INDEX sg_steps_task ON sg_steps (task_id);
CREATE INDEX sg_steps_state ON sg_steps (state);

CREATE TABLE sg_edges (
    task_id uuid NOT NULL REFERENCES sg_tasks (id) ON DELETE CASCADE,
    from_step uuid NOT NULL REFERENCES sg_steps (id) ON DELETE CASCADE,
    to_step uuid NOT NULL REFERENCES sg_steps (id) ON DELETE CASCADE,
    PRIMARY KEY (to_step, from_step)
);
CREATE INDEX sg_edges_task ON sg_edges (task_id);

-- Append-only audit trails; exactly one most_recent row per entity.
CREATE TABLE sg_task_transitions (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES sg_tasks (id) ON DELETE CASCADE,
    from_state text,
    to_state text NOT NULL,
    sort_key integer NOT NULL,
    most_recent boolean NOT NULL,
    metadata jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (task_id, sort_key)
);
CREATE UNIQUE INDEX sg_task_transitions_most_recent ON sg_task_transitions (task_id) WHERE most_recent;

CREATE TABLE sg_step_transitions (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES sg_tasks (id) ON DELETE CASCADE,
    step_id uuid NOT NULL REFERENCES sg_steps (id) ON DELETE CASCADE,
    step_name text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    attempt integer NOT NULL,
    sort_key integer NOT NULL,
    most_recent boolean NOT NULL,
    metadata jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (step_id, sort_key)
);
CREATE UNIQUE INDEX sg_step_transitions_most_recent ON sg_step_transitions (step_id) WHERE most_recent;
CREATE INDEX sg_step_transitions_task ON sg_step_transitions (task_id);

-- The queue: a message is claimed by moving visible_at past now (SKIP LOCKED),
-- deleted on ack, and visible again after its visibility timeout.
CREATE TABLE sg_queue (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    payload bytea NOT NULL,
    visible_at timestamptz NOT NULL,
    delivery_count integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sg_queue_ready ON sg_queue (queue, visible_at, id);
