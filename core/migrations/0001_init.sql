-- stepgraph schema: durable state and the PostgreSQL queue.

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

CREATE FUNCTION sg_conflict(msg text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', msg USING ERRCODE = 'SG409';
END $$;

CREATE FUNCTION sg_record_task_transition(p_task uuid, p_from text, p_to text, p_at timestamptz, p_meta jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE v_sort integer;
BEGIN
    UPDATE sg_task_transitions SET most_recent = false
     WHERE task_id = p_task AND most_recent RETURNING sort_key INTO v_sort;
    INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, most_recent, metadata, created_at)
    VALUES (p_task, p_from, p_to, coalesce(v_sort, 0) + 1, true, p_meta, p_at);
    IF p_to IN ('complete', 'error', 'cancelled', 'resolved_manually') THEN
        PERFORM pg_notify('stepgraph_task', p_task::text);
    END IF;
END $$;

CREATE FUNCTION sg_record_step_transition(
    p_task uuid, p_step uuid, p_name text, p_from text, p_to text, p_attempt integer, p_at timestamptz, p_meta jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE v_sort integer;
BEGIN
    UPDATE sg_step_transitions SET most_recent = false
     WHERE step_id = p_step AND most_recent RETURNING sort_key INTO v_sort;
    INSERT INTO sg_step_transitions
        (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, most_recent, metadata, created_at)
    VALUES (p_task, p_step, p_name, p_from, p_to, p_attempt, coalesce(v_sort, 0) + 1, true, p_meta, p_at);
END $$;

-- Sends messages (delays in ms) and wakes the consumers of their queues.
CREATE FUNCTION sg_send(p_queues text[], p_payloads bytea[], p_delays bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE q text;
BEGIN
    IF p_queues IS NULL OR cardinality(p_queues) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO sg_queue (queue, payload, visible_at)
    SELECT m.q, m.p, clock_timestamp() + make_interval(secs => m.d / 1000.0)
      FROM unnest(p_queues, p_payloads, p_delays) AS m (q, p, d);
    FOR q IN SELECT DISTINCT unnest(p_queues) LOOP
        PERFORM pg_notify('stepgraph_queue', q);
    END LOOP;
END $$;

CREATE FUNCTION sg_ack(p_queue text, p_id bigint) RETURNS void LANGUAGE sql AS $$
    DELETE FROM sg_queue WHERE id = p_id AND queue = p_queue;
$$;

-- Applies one orchestration commit: the optimistic lock check, every write
-- op in order (transitions compare-and-swap on their from-state), the sends
-- and the ack. Raises SG409 on any conflict; nothing is applied then.
CREATE FUNCTION sg_apply(
    p_task uuid, p_lock bigint, p_ops jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[],
    p_ack_queue text, p_ack_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    op jsonb;
    d jsonb;
    t jsonb;
BEGIN
    IF p_lock IS NOT NULL THEN
        UPDATE sg_tasks SET lock_version = lock_version + 1 WHERE id = p_task AND lock_version = p_lock;
        IF NOT FOUND THEN
            PERFORM sg_conflict(format('task %s was changed concurrently', p_task));
        END IF;
    END IF;
    FOR op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
        d := op -> 'data';
        CASE op ->> 'op'
        WHEN 'insert_task' THEN
            INSERT INTO sg_namespaces (name) VALUES (d ->> 'namespace') ON CONFLICT DO NOTHING;
            INSERT INTO sg_tasks (id, namespace, name, version, context, state, idempotency_key, priority,
                                  result, error, created_at, updated_at, completed_at)
            VALUES ((d ->> 'id')::uuid, d ->> 'namespace', d ->> 'name', d ->> 'version', d -> 'context',
                    d ->> 'state', d ->> 'idempotency_key', (d ->> 'priority')::integer,
                    nullif(d -> 'result', 'null'), nullif(d -> 'error', 'null'),
                    (d ->> 'created_at')::timestamptz, (d ->> 'updated_at')::timestamptz,
                    (d ->> 'completed_at')::timestamptz);
        WHEN 'insert_step' THEN
            INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                                  max_attempts, timeout_seconds, batch_size, backoff_until, cursor, outcome, created_at)
            VALUES ((d ->> 'id')::uuid, (d ->> 'task_id')::uuid, d ->> 'name', d ->> 'template_step',
                    d ->> 'step_type', d ->> 'handler', d -> 'config', d ->> 'state', (d ->> 'attempts')::integer,
                    (d ->> 'max_attempts')::integer, (d ->> 'timeout_seconds')::double precision,
                    (d ->> 'batch_size')::bigint, (d ->> 'backoff_until')::timestamptz,
                    nullif(d -> 'cursor', 'null'), nullif(d -> 'outcome', 'null'), (d ->> 'created_at')::timestamptz);
        WHEN 'insert_edge' THEN
            INSERT INTO sg_edges (task_id, from_step, to_step)
            VALUES (p_task, (d ->> 'from')::uuid, (d ->> 'to')::uuid);
        WHEN 'task' THEN
            t := d -> 'transition';
            UPDATE sg_tasks
               SET state = t ->> 'to',
                   updated_at = (t ->> 'at')::timestamptz,
                   result = coalesce(nullif(d -> 'result', 'null'), result),
                   error = coalesce(nullif(d -> 'error', 'null'), error),
                   completed_at = CASE WHEN t ->> 'to' IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                       THEN (t ->> 'at')::timestamptz ELSE completed_at END
             WHERE id = p_task AND (t ->> 'from' IS NULL OR state = t ->> 'from');
            IF NOT FOUND THEN
                PERFORM sg_conflict(format('task %s is not %s', p_task, t ->> 'from'));
            END IF;
            PERFORM sg_record_task_transition(p_task, t ->> 'from', t ->> 'to', (t ->> 'at')::timestamptz, t -> 'metadata');
        WHEN 'step' THEN
            t := d -> 'transition';
            UPDATE sg_steps
               SET state = t ->> 'to',
                   attempts = (d ->> 'attempts')::integer,
                   backoff_until = (d ->> 'backoff_until')::timestamptz,
                   outcome = nullif(d -> 'outcome', 'null')
             WHERE id = (t ->> 'step_id')::uuid AND (t ->> 'from' IS NULL OR state = t ->> 'from');
            IF NOT FOUND THEN
                PERFORM sg_conflict(format('step %s is not %s', t ->> 'step_name', t ->> 'from'));
            END IF;
            PERFORM sg_record_step_transition(p_task, (t ->> 'step_id')::uuid, t ->> 'step_name', t ->> 'from',
                                              t ->> 'to', (t ->> 'attempt')::integer, (t ->> 'at')::timestamptz,
                                              t -> 'metadata');
        END CASE;
    END LOOP;
    PERFORM sg_send(p_queues, p_payloads, p_delays);
    IF p_ack_id IS NOT NULL THEN
        PERFORM sg_ack(p_ack_queue, p_ack_id);
    END IF;
END $$;

-- The whole graph of a task, with its lock version.
CREATE FUNCTION sg_graph(p_task uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'lock_version', t.lock_version,
        'task', to_jsonb(t),
        'steps', coalesce((SELECT jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.name)
                             FROM sg_steps s WHERE s.task_id = t.id), '[]'),
        'edges', coalesce((SELECT jsonb_agg(jsonb_build_object('from', e.from_step, 'to', e.to_step))
                             FROM sg_edges e WHERE e.task_id = t.id), '[]'))
      FROM sg_tasks t WHERE t.id = p_task;
$$;

-- Worker: Enqueued -> InProgress for this attempt, and what the handler needs.
CREATE FUNCTION sg_start_step(p_step uuid, p_attempt integer) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s sg_steps;
    tk sg_tasks;
BEGIN
    SELECT * INTO s FROM sg_steps WHERE id = p_step FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'not_found');
    END IF;
    SELECT * INTO tk FROM sg_tasks WHERE id = s.task_id;
    IF tk.state IN ('complete', 'error', 'cancelled', 'resolved_manually') OR s.attempts <> p_attempt THEN
        RETURN jsonb_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    IF s.state = 'enqueued' THEN
        UPDATE sg_steps SET state = 'in_progress' WHERE id = p_step;
        PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'enqueued', 'in_progress', s.attempts,
                                          clock_timestamp(), '{}');
    ELSIF s.state = 'enqueued_for_orchestration' THEN
        RETURN jsonb_build_object('status', 'already_submitted');
    ELSIF s.state <> 'in_progress' THEN
        RETURN jsonb_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    RETURN jsonb_build_object('status', 'started', 'work', jsonb_build_object(
        'task_id', tk.id, 'step_id', s.id, 'namespace', tk.namespace, 'task_name', tk.name,
        'step_name', s.name, 'handler', s.handler, 'config', s.config, 'context', tk.context,
        'attempt', s.attempts, 'max_attempts', s.max_attempts, 'timeout_seconds', s.timeout_seconds,
        'batch_size', s.batch_size, 'cursor', s.cursor,
        'dependencies', coalesce((SELECT jsonb_agg(jsonb_build_object('name', p.name, 'outcome', p.outcome))
                                    FROM sg_edges e JOIN sg_steps p ON p.id = e.from_step
                                   WHERE e.to_step = p_step), '[]')));
END $$;

-- Worker: InProgress -> EnqueuedForOrchestration with the outcome; the sends
-- go out when accepted (or already submitted), the ack always.
CREATE FUNCTION sg_submit_result(
    p_step uuid, p_attempt integer, p_outcome jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[],
    p_ack_queue text, p_ack_id bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s sg_steps;
    v_status text;
BEGIN
    SELECT * INTO s FROM sg_steps WHERE id = p_step FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'not_found');
    END IF;
    IF s.attempts <> p_attempt THEN
        v_status := 'refused';
    ELSIF s.state = 'in_progress' THEN
        UPDATE sg_steps SET state = 'enqueued_for_orchestration', outcome = p_outcome WHERE id = p_step;
        PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'in_progress', 'enqueued_for_orchestration',
                                          s.attempts, clock_timestamp(),
                                          jsonb_build_object('outcome', p_outcome ->> 'status'));
        v_status := 'accepted';
    ELSIF s.state IN ('enqueued_for_orchestration', 'complete', 'error', 'waiting_for_retry') THEN
        v_status := 'duplicate';
    ELSE
        v_status := 'refused';
    END IF;
    IF v_status <> 'refused' THEN
        PERFORM sg_send(p_queues, p_payloads, p_delays);
    END IF;
    IF p_ack_id IS NOT NULL THEN
        PERFORM sg_ack(p_ack_queue, p_ack_id);
    END IF;
    RETURN jsonb_build_object('status', v_status, 'state', s.state, 'attempts', s.attempts);
END $$;

-- Claims up to p_max visible messages. A claim needs no durability (a lost
-- one only makes the message visible again), so it commits asynchronously.
CREATE FUNCTION sg_receive(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE sg_queue m
       SET visible_at = clock_timestamp() + make_interval(secs => p_visibility_ms / 1000.0),
           delivery_count = m.delivery_count + 1
      FROM (SELECT q.id FROM sg_queue q
             WHERE q.queue = p_queue AND q.visible_at <= clock_timestamp()
             ORDER BY q.id LIMIT p_max FOR UPDATE SKIP LOCKED) c
     WHERE m.id = c.id
    RETURNING m.id, m.payload, m.delivery_count;
END $$;
