-- Eager dispatch by lease.
--
-- A step that the committing worker takes for itself (it has a free slot and
-- serves the step's queue) no longer gets a queue message written claimed and
-- deleted one commit later: the commit that enqueues it leases it to that
-- worker (claimed_until) instead. That saves a queue row inserted and deleted
-- per step on the PostgreSQL queue, and gives a broker (RabbitMQ) eager
-- dispatch too, which it could not have when the claim was a queue row. A
-- lease that runs out on a step still Enqueued or InProgress means its worker
-- died: the orchestrators' sweep (Store::stranded) sends the step's message
-- then, as a visibility timeout would have. A step that moved on keeps its
-- stale lease; the sweep only looks at the two running states.

ALTER TABLE sg_steps ADD COLUMN claimed_until timestamptz;

DROP FUNCTION sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], boolean[], bigint, text, bigint);

CREATE FUNCTION sg_apply(
    p_task uuid, p_lock bigint, p_change jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[], p_leases uuid[], p_lease_ms bigint,
    p_ack_queue text, p_ack_id bigint)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_task jsonb := p_change -> 'task';
    v_count integer;
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

    -- A new step is created leased when it is ready at once (a task's first steps).
    IF p_change ? 'new_steps' THEN
        INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                              max_attempts, timeout_seconds, batch_size, backoff_until, cursor, outcome, created_at,
                              claimed_until)
        SELECT s.id, s.task_id, s.name, s.template_step, s.step_type, s.handler, coalesce(s.config, 'null'),
               s.state, s.attempts, s.max_attempts, s.timeout_seconds, s.batch_size, s.backoff_until, s.cursor,
               s.outcome, s.created_at,
               CASE WHEN s.id = ANY (p_leases)
                    THEN clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0) END
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
           SET state = m."to", attempts = m.attempts, backoff_until = m.backoff_until, outcome = m.outcome,
               claimed_until = CASE WHEN s.id = ANY (p_leases)
                                    THEN clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0)
                                    ELSE s.claimed_until END
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
        INSERT INTO sg_queue (queue, payload, visible_at)
        SELECT m.q, m.p, clock_timestamp() + make_interval(secs => m.d / 1000.0)
          FROM unnest(p_queues, p_payloads, p_delays) WITH ORDINALITY AS m (q, p, d, ord)
         ORDER BY m.ord;
        PERFORM pg_notify('stepgraph_queue', q) FROM (SELECT DISTINCT q FROM unnest(p_queues) AS q) x;
    END IF;
    IF p_ack_id IS NOT NULL THEN
        DELETE FROM sg_queue WHERE id = p_ack_id AND queue = p_ack_queue;
    END IF;
END $$;
