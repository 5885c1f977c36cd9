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

-- Applies one orchestration commit: the optimistic lock check, then each kind
-- of op as one set-based statement (each step's transitions collapse into one
-- compare-and-swap on the from-state of its first), the sends and the ack.
-- Raises SG409 on any conflict; nothing is applied then.
CREATE FUNCTION sg_apply(
    p_task uuid, p_lock bigint, p_ops jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[],
    p_ack_queue text, p_ack_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_expected integer;
    v_done integer;
    v_first jsonb;
    v_last jsonb;
    v_result jsonb;
    v_error jsonb;
BEGIN
    IF p_lock IS NOT NULL THEN
        UPDATE sg_tasks SET lock_version = lock_version + 1 WHERE id = p_task AND lock_version = p_lock;
        IF NOT FOUND THEN
            PERFORM sg_conflict(format('task %s was changed concurrently', p_task));
        END IF;
    END IF;

    IF p_ops @> '[{"op": "insert_task"}]' THEN
        INSERT INTO sg_namespaces (name)
        SELECT o -> 'data' ->> 'namespace' FROM jsonb_array_elements(p_ops) o WHERE o ->> 'op' = 'insert_task'
        ON CONFLICT DO NOTHING;
        INSERT INTO sg_tasks (id, namespace, name, version, context, state, idempotency_key, priority,
                              result, error, created_at, updated_at, completed_at)
        SELECT (d ->> 'id')::uuid, d ->> 'namespace', d ->> 'name', d ->> 'version', d -> 'context',
               d ->> 'state', d ->> 'idempotency_key', (d ->> 'priority')::integer,
               nullif(d -> 'result', 'null'), nullif(d -> 'error', 'null'),
               (d ->> 'created_at')::timestamptz, (d ->> 'updated_at')::timestamptz, (d ->> 'completed_at')::timestamptz
          FROM jsonb_array_elements(p_ops) o, LATERAL (SELECT o -> 'data' AS d) x
         WHERE o ->> 'op' = 'insert_task';
    END IF;

    IF p_ops @> '[{"op": "insert_step"}]' THEN
        INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                              max_attempts, timeout_seconds, batch_size, backoff_until, cursor, outcome, created_at)
        SELECT (d ->> 'id')::uuid, (d ->> 'task_id')::uuid, d ->> 'name', d ->> 'template_step',
               d ->> 'step_type', d ->> 'handler', d -> 'config', d ->> 'state', (d ->> 'attempts')::integer,
               (d ->> 'max_attempts')::integer, (d ->> 'timeout_seconds')::double precision,
               (d ->> 'batch_size')::bigint, (d ->> 'backoff_until')::timestamptz,
               nullif(d -> 'cursor', 'null'), nullif(d -> 'outcome', 'null'), (d ->> 'created_at')::timestamptz
          FROM jsonb_array_elements(p_ops) o, LATERAL (SELECT o -> 'data' AS d) x
         WHERE o ->> 'op' = 'insert_step';
    END IF;

    IF p_ops @> '[{"op": "insert_edge"}]' THEN
        INSERT INTO sg_edges (task_id, from_step, to_step)
        SELECT p_task, (o -> 'data' ->> 'from')::uuid, (o -> 'data' ->> 'to')::uuid
          FROM jsonb_array_elements(p_ops) o WHERE o ->> 'op' = 'insert_edge';
    END IF;

    IF p_ops @> '[{"op": "step"}]' THEN
        -- Each step moves from the from-state of its first transition here to
        -- the state and values of its last one: one compare-and-swap per step.
        WITH t AS (
            SELECT (o -> 'data' -> 'transition' ->> 'step_id')::uuid AS step_id, ord, o -> 'data' AS d
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
             WHERE o ->> 'op' = 'step'),
        firsts AS (SELECT DISTINCT ON (step_id) step_id, d -> 'transition' ->> 'from' AS from_state
                     FROM t ORDER BY step_id, ord),
        lasts AS (SELECT DISTINCT ON (step_id) step_id, d FROM t ORDER BY step_id, ord DESC),
        moved AS (
            UPDATE sg_steps s
               SET state = l.d -> 'transition' ->> 'to',
                   attempts = (l.d ->> 'attempts')::integer,
                   backoff_until = (l.d ->> 'backoff_until')::timestamptz,
                   outcome = nullif(l.d -> 'outcome', 'null')
              FROM lasts l JOIN firsts f USING (step_id)
             WHERE s.id = l.step_id AND (f.from_state IS NULL OR s.state = f.from_state)
            RETURNING s.id)
        SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM lasts) INTO v_done, v_expected;
        IF v_done <> v_expected THEN
            PERFORM sg_conflict(format('task %s: a step is no longer in the state this change expects', p_task));
        END IF;

        UPDATE sg_step_transitions SET most_recent = false
         WHERE most_recent AND step_id IN (
               SELECT (o -> 'data' -> 'transition' ->> 'step_id')::uuid
                 FROM jsonb_array_elements(p_ops) o WHERE o ->> 'op' = 'step');
        INSERT INTO sg_step_transitions
            (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, most_recent, metadata, created_at)
        SELECT p_task, n.step_id, n.tr ->> 'step_name', n.tr ->> 'from', n.tr ->> 'to', (n.tr ->> 'attempt')::integer,
               coalesce((SELECT max(sort_key) FROM sg_step_transitions p WHERE p.step_id = n.step_id), 0) + n.rn,
               n.rn = n.cnt, n.tr -> 'metadata', (n.tr ->> 'at')::timestamptz
          FROM (SELECT (o -> 'data' -> 'transition' ->> 'step_id')::uuid AS step_id, o -> 'data' -> 'transition' AS tr,
                       row_number() OVER (PARTITION BY o -> 'data' -> 'transition' ->> 'step_id' ORDER BY ord) AS rn,
                       count(*) OVER (PARTITION BY o -> 'data' -> 'transition' ->> 'step_id') AS cnt
                  FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
                 WHERE o ->> 'op' = 'step') n;
    END IF;

    IF p_ops @> '[{"op": "task"}]' THEN
        SELECT o -> 'data' INTO v_first FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
         WHERE o ->> 'op' = 'task' ORDER BY ord LIMIT 1;
        SELECT o -> 'data' INTO v_last FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
         WHERE o ->> 'op' = 'task' ORDER BY ord DESC LIMIT 1;
        SELECT nullif(o -> 'data' -> 'result', 'null') INTO v_result FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
         WHERE o ->> 'op' = 'task' AND jsonb_typeof(o -> 'data' -> 'result') <> 'null' ORDER BY ord DESC LIMIT 1;
        SELECT nullif(o -> 'data' -> 'error', 'null') INTO v_error FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
         WHERE o ->> 'op' = 'task' AND jsonb_typeof(o -> 'data' -> 'error') <> 'null' ORDER BY ord DESC LIMIT 1;
        UPDATE sg_tasks
           SET state = v_last -> 'transition' ->> 'to',
               updated_at = (v_last -> 'transition' ->> 'at')::timestamptz,
               result = coalesce(v_result, result),
               error = coalesce(v_error, error),
               completed_at = CASE WHEN v_last -> 'transition' ->> 'to' IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                   THEN (v_last -> 'transition' ->> 'at')::timestamptz ELSE completed_at END
         WHERE id = p_task
           AND (v_first -> 'transition' ->> 'from' IS NULL OR state = v_first -> 'transition' ->> 'from');
        IF NOT FOUND THEN
            PERFORM sg_conflict(format('task %s is not %s', p_task, v_first -> 'transition' ->> 'from'));
        END IF;

        UPDATE sg_task_transitions SET most_recent = false WHERE task_id = p_task AND most_recent;
        INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, most_recent, metadata, created_at)
        SELECT p_task, n.tr ->> 'from', n.tr ->> 'to',
               coalesce((SELECT max(sort_key) FROM sg_task_transitions p WHERE p.task_id = p_task), 0) + n.rn,
               n.rn = n.cnt, n.tr -> 'metadata', (n.tr ->> 'at')::timestamptz
          FROM (SELECT o -> 'data' -> 'transition' AS tr,
                       row_number() OVER (ORDER BY ord) AS rn, count(*) OVER () AS cnt
                  FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x (o, ord)
                 WHERE o ->> 'op' = 'task') n;
        IF v_last -> 'transition' ->> 'to' IN ('complete', 'error', 'cancelled', 'resolved_manually') THEN
            PERFORM pg_notify('stepgraph_task', p_task::text);
        END IF;
    END IF;

    PERFORM sg_send(p_queues, p_payloads, p_delays);
    IF p_ack_id IS NOT NULL THEN
        DELETE FROM sg_queue WHERE id = p_ack_id AND queue = p_ack_queue;
    END IF;
END $$;

-- The whole graph of a task, with its lock version.
CREATE FUNCTION sg_graph(p_task uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'lock_version', t.lock_version,
        'task', row_to_json(t),
        'steps', coalesce((SELECT json_agg(s) FROM sg_steps s WHERE s.task_id = t.id), '[]'),
        'edges', coalesce((SELECT json_agg(json_build_object('from', e.from_step, 'to', e.to_step))
                             FROM sg_edges e WHERE e.task_id = t.id), '[]'))
      FROM sg_tasks t WHERE t.id = p_task;
$$;

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

-- Worker: what the handler of an attempt needs. With p_mark, also the
-- Enqueued -> InProgress transition; without it the worker writes that
-- transition (with the handler's start time) in the commit that records the
-- outcome, and gets the task's graph to make that commit against.
CREATE FUNCTION sg_start_step(p_step uuid, p_attempt integer, p_mark boolean) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s sg_steps;
    tk sg_tasks;
BEGIN
    IF p_mark THEN
        SELECT * INTO s FROM sg_steps WHERE id = p_step FOR UPDATE;
    ELSE
        SELECT * INTO s FROM sg_steps WHERE id = p_step;
    END IF;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'not_found');
    END IF;
    SELECT * INTO tk FROM sg_tasks WHERE id = s.task_id;
    IF tk.state IN ('complete', 'error', 'cancelled', 'resolved_manually') OR s.attempts <> p_attempt THEN
        RETURN jsonb_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    IF s.state = 'enqueued' THEN
        IF p_mark THEN
            UPDATE sg_steps SET state = 'in_progress' WHERE id = p_step;
            PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'enqueued', 'in_progress', s.attempts,
                                              clock_timestamp(), '{}');
        END IF;
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
                                   WHERE e.to_step = p_step), '[]')),
        'graph', CASE WHEN p_mark THEN NULL ELSE sg_graph(tk.id)::jsonb END);
END $$;

-- Claims up to p_max visible messages. A claim needs no durability (a lost
-- one only makes the message visible again), so it commits asynchronously.
-- When it claims nothing, it says when the queue's next message becomes
-- visible, so that an idle consumer knows how long to sleep.
CREATE FUNCTION sg_receive(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer, next_visible timestamptz) LANGUAGE plpgsql AS $$
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
    RETURNING m.id, m.payload, m.delivery_count, NULL::timestamptz;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bytea, NULL::integer, min(q.visible_at)
                       FROM sg_queue q WHERE q.queue = p_queue;
    END IF;
END $$;
