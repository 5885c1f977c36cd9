-- A leaner orchestration commit, and eager dispatch.
--
-- sg_apply takes the write batch grouped by the caller (inserts by kind; each
-- step's and the task's transitions collapsed into one compare-and-swap;
-- audit rows numbered per entity), so each kind of change is one set-based
-- statement over jsonb_to_recordset. Messages may be sent already claimed by
-- the committing process (it runs the steps it has just made ready without a
-- round trip through the queue); their ids are returned in order.
--
-- sg_start_step without p_mark returns only the task's graph: the caller
-- derives the handler's input from it.
--
-- The functions run their statements with generic plans (every lookup is by
-- key, or by = ANY of an array of keys, so one plan fits every call): the
-- default re-plans a statement whose custom plans look cheaper, which here
-- cost more than executing it.
--
-- The audit tables lose their foreign keys: only these functions write
-- them, with the ids of the rows they change in the same transaction, and
-- the key checks (two per audit row, eight or more per step) took about a
-- tenth of the database's time.

ALTER TABLE sg_step_transitions DROP CONSTRAINT sg_step_transitions_task_id_fkey,
                                DROP CONSTRAINT sg_step_transitions_step_id_fkey;
ALTER TABLE sg_task_transitions DROP CONSTRAINT sg_task_transitions_task_id_fkey;

DROP FUNCTION sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], text, bigint);

CREATE FUNCTION sg_apply(
    p_task uuid, p_lock bigint, p_change jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[], p_claimed boolean[], p_claim_ms bigint,
    p_ack_queue text, p_ack_id bigint)
RETURNS bigint[] LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_task jsonb := p_change -> 'task';
    v_count integer;
    v_claimed bigint[];
    v_steps uuid[];
BEGIN
    IF p_change ? 'new_tasks' THEN
        INSERT INTO sg_namespaces (name)
        SELECT DISTINCT t.namespace FROM jsonb_to_recordset(p_change -> 'new_tasks') AS t (namespace text)
        ON CONFLICT DO NOTHING;
        INSERT INTO sg_tasks (id, namespace, name, version, context, state, idempotency_key, priority,
                              result, error, created_at, updated_at, completed_at)
        SELECT t.id, t.namespace, t.name, t.version, coalesce(t.context, 'null'), t.state, t.idempotency_key,
               t.priority, t.result, t.error, t.created_at, t.updated_at, t.completed_at
          FROM jsonb_to_recordset(p_change -> 'new_tasks') AS t (
               id uuid, namespace text, name text, version text, context jsonb, state text, idempotency_key text,
               priority integer, result jsonb, error jsonb, created_at timestamptz, updated_at timestamptz,
               completed_at timestamptz);
    END IF;

    -- The optimistic lock and the task's own compare-and-swap: one row update.
    IF p_lock IS NOT NULL OR v_task IS NOT NULL THEN
        UPDATE sg_tasks
           SET lock_version = lock_version + CASE WHEN p_lock IS NULL THEN 0 ELSE 1 END,
               state = coalesce(v_task ->> 'to', state),
               updated_at = coalesce((v_task ->> 'at')::timestamptz, updated_at),
               result = coalesce(nullif(v_task -> 'result', 'null'), result),
               error = coalesce(nullif(v_task -> 'error', 'null'), error),
               completed_at = CASE WHEN v_task ->> 'to' IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                   THEN (v_task ->> 'at')::timestamptz ELSE completed_at END
         WHERE id = p_task
           AND (p_lock IS NULL OR lock_version = p_lock)
           AND (v_task ->> 'from' IS NULL OR state = v_task ->> 'from');
        IF NOT FOUND THEN
            PERFORM sg_conflict(format('task %s was changed concurrently', p_task));
        END IF;
    END IF;

    IF p_change ? 'new_steps' THEN
        INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                              max_attempts, timeout_seconds, batch_size, backoff_until, cursor, outcome, created_at)
        SELECT s.id, s.task_id, s.name, s.template_step, s.step_type, s.handler, coalesce(s.config, 'null'),
               s.state, s.attempts, s.max_attempts, s.timeout_seconds, s.batch_size, s.backoff_until, s.cursor,
               s.outcome, s.created_at
          FROM jsonb_to_recordset(p_change -> 'new_steps') AS s (
               id uuid, task_id uuid, name text, template_step text, step_type text, handler text, config jsonb,
               state text, attempts integer, max_attempts integer, timeout_seconds double precision,
               batch_size bigint, backoff_until timestamptz, cursor jsonb, outcome jsonb, created_at timestamptz);
    END IF;

    IF p_change ? 'new_edges' THEN
        INSERT INTO sg_edges (task_id, from_step, to_step)
        SELECT p_task, e."from", e."to" FROM jsonb_to_recordset(p_change -> 'new_edges') AS e ("from" uuid, "to" uuid);
    END IF;

    IF p_change ? 'steps' THEN
        -- Found by `= ANY` of an array: an index scan in any (generic) plan.
        SELECT array_agg(m.id) INTO v_steps FROM jsonb_to_recordset(p_change -> 'steps') AS m (id uuid);
        UPDATE sg_steps s
           SET state = m."to", attempts = m.attempts, backoff_until = m.backoff_until, outcome = m.outcome
          FROM jsonb_to_recordset(p_change -> 'steps') AS m (
               id uuid, "from" text, "to" text, attempts integer, backoff_until timestamptz, outcome jsonb)
         WHERE s.id = ANY (v_steps) AND s.id = m.id AND s.task_id = p_task
           AND (m."from" IS NULL OR s.state = m."from");
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> jsonb_array_length(p_change -> 'steps') THEN
            PERFORM sg_conflict(format('task %s: a step is no longer in the state this change expects', p_task));
        END IF;

        WITH prev AS (
            UPDATE sg_step_transitions p SET most_recent = false
             WHERE p.most_recent AND p.step_id = ANY (v_steps)
            RETURNING p.step_id, p.sort_key)
        INSERT INTO sg_step_transitions
            (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, most_recent, metadata, created_at)
        SELECT p_task, t.step_id, t.step_name, t."from", t."to", t.attempt, coalesce(prev.sort_key, 0) + t.seq,
               t.last, coalesce(t.metadata, 'null'), t.at
          FROM jsonb_to_recordset(p_change -> 'step_transitions') AS t (
               step_id uuid, step_name text, "from" text, "to" text, attempt integer, at timestamptz,
               metadata jsonb, seq integer, last boolean)
          LEFT JOIN prev ON prev.step_id = t.step_id;
    END IF;

    IF v_task IS NOT NULL THEN
        WITH prev AS (
            UPDATE sg_task_transitions p SET most_recent = false
             WHERE p.task_id = p_task AND p.most_recent
            RETURNING p.sort_key)
        INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, most_recent, metadata, created_at)
        SELECT p_task, t."from", t."to", coalesce((SELECT sort_key FROM prev), 0) + t.seq, t.last,
               coalesce(t.metadata, 'null'), t.at
          FROM jsonb_to_recordset(p_change -> 'task_transitions') AS t (
               "from" text, "to" text, at timestamptz, metadata jsonb, seq integer, last boolean);
        IF v_task ->> 'to' IN ('complete', 'error', 'cancelled', 'resolved_manually') THEN
            PERFORM pg_notify('stepgraph_task', p_task::text);
        END IF;
    END IF;

    IF cardinality(p_queues) > 0 THEN
        WITH sent AS (
            INSERT INTO sg_queue (queue, payload, visible_at, delivery_count)
            SELECT m.q, m.p,
                   clock_timestamp() + make_interval(secs => (CASE WHEN m.c THEN p_claim_ms ELSE m.d END) / 1000.0),
                   CASE WHEN m.c THEN 1 ELSE 0 END
              FROM unnest(p_queues, p_payloads, p_delays, p_claimed) WITH ORDINALITY AS m (q, p, d, c, ord)
             ORDER BY m.ord
            RETURNING id, delivery_count)
        SELECT array_agg(id ORDER BY id) FILTER (WHERE delivery_count = 1) INTO v_claimed FROM sent;
        PERFORM pg_notify('stepgraph_queue', q)
           FROM (SELECT DISTINCT m.q FROM unnest(p_queues, p_claimed) AS m (q, c) WHERE NOT m.c) x;
    END IF;
    IF p_ack_id IS NOT NULL THEN
        DELETE FROM sg_queue WHERE id = p_ack_id AND queue = p_ack_queue;
    END IF;
    RETURN coalesce(v_claimed, '{}');
END $$;

CREATE OR REPLACE FUNCTION sg_start_step(p_step uuid, p_attempt integer, p_mark boolean) RETURNS jsonb
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
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
    IF NOT p_mark THEN
        RETURN jsonb_build_object('status', 'started', 'graph', sg_graph(tk.id)::jsonb);
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

ALTER FUNCTION sg_receive(text, integer, bigint) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION sg_submit_result(uuid, integer, jsonb, text[], bytea[], bigint[], text, bigint)
    SET plan_cache_mode = force_generic_plan;

-- A task's graph and its audit trail in one read, each trail in order.
CREATE FUNCTION sg_view(p_task uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'graph', sg_graph(p_task),
        'task', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'from', t.from_state, 'to', t.to_state, 'at', t.created_at,
                    'metadata', t.metadata) ORDER BY t.sort_key)
                  FROM sg_task_transitions t WHERE t.task_id = p_task), '[]'),
        'steps', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'step_id', t.step_id, 'step_name', t.step_name, 'from', t.from_state,
                    'to', t.to_state, 'attempt', t.attempt, 'at', t.created_at, 'metadata', t.metadata) ORDER BY t.id)
                  FROM sg_step_transitions t WHERE t.task_id = p_task), '[]'));
$$;
