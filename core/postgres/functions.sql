-- The server-side functions, each as it is now: migrate applies this file
-- after the numbered migrations (which hold schema changes only) whenever
-- its text changed since it was last applied, in the same transaction and
-- under the same advisory lock. Every definition is CREATE OR REPLACE, so
-- applying it again changes nothing. A change of a function's arguments or
-- result type cannot be replaced in place: it needs a numbered migration
-- that drops the old function (DROP FUNCTION IF EXISTS), after which this
-- file creates the new one.
--
-- The functions run their statements with generic plans where every lookup
-- is by key (plan_cache_mode = force_generic_plan): re-planning a statement
-- whose custom plans look cheaper cost more here than executing it.

-- A compare-and-swap that found another state: SQLSTATE SG409, which the
-- store maps to StoreError::Conflict (re-read and decide again).
CREATE OR REPLACE FUNCTION sg_conflict(msg text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', msg USING ERRCODE = 'SG409';
END $$;

-- Appends a step's audit row. Its sort_key is the step's transition count
-- once the caller's UPDATE of the step has added this one to it: the audit
-- tables are only appended to, never read, on the way.
CREATE OR REPLACE FUNCTION sg_record_step_transition(
    p_task uuid, p_step uuid, p_name text, p_from text, p_to text, p_attempt integer, p_sort integer,
    p_at timestamptz, p_meta jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO sg_step_transitions
        (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, metadata, created_at)
    VALUES (p_task, p_step, p_name, p_from, p_to, p_attempt, p_sort, p_meta, p_at);
$$;

-- Sends messages (delays in ms) and wakes the consumers of their queues.
CREATE OR REPLACE FUNCTION sg_send(p_queues text[], p_payloads bytea[], p_delays bigint[])
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

-- Acknowledges (deletes) a claimed message.
CREATE OR REPLACE FUNCTION sg_ack(p_queue text, p_id bigint) RETURNS void LANGUAGE sql AS $$
    DELETE FROM sg_queue WHERE id = p_id AND queue = p_queue;
$$;

-- A task's graph: its lock version, the task, its steps in the order they
-- were made (ids are time-ordered) and its edges.
CREATE OR REPLACE FUNCTION sg_graph(p_task uuid) RETURNS json
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN (SELECT json_build_object(
        'lock_version', t.lock_version,
        'task', row_to_json(t),
        'steps', coalesce((SELECT json_agg(s ORDER BY s.id) FROM sg_steps s WHERE s.task_id = t.id), '[]'),
        'edges', coalesce((SELECT json_agg(json_build_object('from', e.from_step, 'to', e.to_step))
                             FROM sg_edges e WHERE e.task_id = t.id), '[]'))
      FROM sg_tasks t WHERE t.id = p_task);
END $$;

-- Worker: InProgress -> EnqueuedForOrchestration with the outcome; the sends
-- go out when accepted (or already submitted), the ack always.
CREATE OR REPLACE FUNCTION sg_submit_result(
    p_step uuid, p_attempt integer, p_outcome jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[],
    p_ack_queue text, p_ack_id bigint)
RETURNS jsonb LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s sg_steps;
    v_status text;
    v_sort integer;
BEGIN
    SELECT * INTO s FROM sg_steps WHERE id = p_step FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'not_found');
    END IF;
    IF s.attempts <> p_attempt THEN
        v_status := 'refused';
    ELSIF s.state = 'in_progress' THEN
        UPDATE sg_steps SET state = 'enqueued_for_orchestration', outcome = p_outcome,
                            transitions = transitions + 1
         WHERE id = p_step RETURNING transitions INTO v_sort;
        PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'in_progress', 'enqueued_for_orchestration',
                                          s.attempts, v_sort, clock_timestamp(),
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

-- Worker: what the handler of an attempt needs (the graph, and with p_mark
-- the Enqueued -> InProgress transition), in json: casting the graph to
-- jsonb would parse it once more on every step start.
CREATE OR REPLACE FUNCTION sg_start_step(p_step uuid, p_attempt integer, p_mark boolean) RETURNS json
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s sg_steps;
    tk sg_tasks;
    v_sort integer;
BEGIN
    IF p_mark THEN
        SELECT * INTO s FROM sg_steps WHERE id = p_step FOR UPDATE;
    ELSE
        SELECT * INTO s FROM sg_steps WHERE id = p_step;
    END IF;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'not_found');
    END IF;
    SELECT * INTO tk FROM sg_tasks WHERE id = s.task_id;
    IF tk.state IN ('complete', 'error', 'cancelled', 'resolved_manually') OR s.attempts <> p_attempt THEN
        RETURN json_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    IF s.state = 'enqueued' THEN
        IF p_mark THEN
            UPDATE sg_steps SET state = 'in_progress', transitions = transitions + 1
             WHERE id = p_step RETURNING transitions INTO v_sort;
            PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'enqueued', 'in_progress', s.attempts,
                                              v_sort, clock_timestamp(), '{}');
        END IF;
    ELSIF s.state = 'enqueued_for_orchestration' THEN
        RETURN json_build_object('status', 'already_submitted');
    ELSIF s.state <> 'in_progress' THEN
        RETURN json_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    IF NOT p_mark THEN
        RETURN json_build_object('status', 'started', 'graph', sg_graph(tk.id));
    END IF;
    RETURN json_build_object('status', 'started', 'work', json_build_object(
        'task_id', tk.id, 'step_id', s.id, 'namespace', tk.namespace, 'task_name', tk.name,
        'step_name', s.name, 'handler', s.handler, 'config', s.config, 'context', tk.context,
        'attempt', s.attempts, 'max_attempts', s.max_attempts, 'timeout_seconds', s.timeout_seconds,
        'batch_size', s.batch_size, 'cursor', s.cursor,
        'dependencies', coalesce((SELECT json_agg(json_build_object('name', p.name, 'outcome', p.outcome))
                                    FROM sg_edges e JOIN sg_steps p ON p.id = e.from_step
                                   WHERE e.to_step = p_step), '[]')));
END $$;

-- Claims walk the ready index in its own order, oldest visible first, and
-- stop after p_max: compared with clock_timestamp() (volatile) the
-- visibility bound was only a filter, so every claim read and sorted all of
-- the queue's messages, and a deep queue (a thousand tasks submitted at
-- once) made each claim cost as much as the queue was long. now() is the
-- claim's own start; a message that becomes visible after it waits for the
-- next claim.
--
-- A claim that gets fewer than p_max also says when the queue's next
-- message becomes visible (a delayed one, or one claimed and not yet
-- acknowledged): the receiver need not claim again before then unless a
-- NOTIFY says something was sent.
-- Claims from several queues at once (a worker's: one per handler it has).
-- Each queue's ready index is walked on its own, oldest first, and the
-- oldest p_max of what they offer are claimed; the rows looked at and not
-- taken are locked only for this statement. The next visible message is
-- each queue's first, found by its index.
CREATE OR REPLACE FUNCTION sg_receive_any(p_queues text[], p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, queue text, payload bytea, delivery_count integer, next_visible timestamptz)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    v_claimed integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE sg_queue m
       SET visible_at = clock_timestamp() + make_interval(secs => p_visibility_ms / 1000.0),
           delivery_count = m.delivery_count + 1
      FROM (SELECT r.id FROM unnest(p_queues) AS n(name)
              CROSS JOIN LATERAL (SELECT q.id, q.visible_at FROM sg_queue q
                                   WHERE q.queue = n.name AND q.visible_at <= now()
                                   ORDER BY q.visible_at, q.id LIMIT p_max FOR UPDATE SKIP LOCKED) r
             ORDER BY r.visible_at, r.id LIMIT p_max) c
     WHERE m.id = c.id
    RETURNING m.id, m.queue, m.payload, m.delivery_count, NULL::timestamptz;
    GET DIAGNOSTICS v_claimed = ROW_COUNT;
    IF v_claimed < p_max THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::bytea, NULL::integer, min(f.at)
                       FROM unnest(p_queues) AS n(name)
                       CROSS JOIN LATERAL (SELECT min(q.visible_at) AS at FROM sg_queue q
                                            WHERE q.queue = n.name) f;
    END IF;
END $$;

-- sg_receive_any of one queue, as the version before it claimed (kept for
-- its processes during an upgrade).
CREATE OR REPLACE FUNCTION sg_receive(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer, next_visible timestamptz)
LANGUAGE sql AS $$
    SELECT r.id, r.payload, r.delivery_count, r.next_visible
      FROM sg_receive_any(ARRAY[p_queue], p_max, p_visibility_ms) r;
$$;

-- A task's graph and its audit trail in one read, each trail in order.
--
-- Planned for each call: the audit tables are partitioned, and a plan made
-- for the task at hand reads (and locks) only its partition, where a
-- generic one would lock every partition each time.
CREATE OR REPLACE FUNCTION sg_view(p_task uuid) RETURNS json
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN json_build_object(
        'graph', sg_graph(p_task),
        'task', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'from', t.from_state, 'to', t.to_state, 'at', t.created_at,
                    'metadata', t.metadata) ORDER BY t.sort_key)
                  FROM sg_task_transitions t WHERE t.task_id = p_task), '[]'),
        'steps', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'step_id', t.step_id, 'step_name', t.step_name, 'from', t.from_state,
                    'to', t.to_state, 'attempt', t.attempt, 'at', t.created_at, 'metadata', t.metadata) ORDER BY t.id)
                  FROM sg_step_transitions t WHERE t.task_id = p_task), '[]'));
END $$;

-- Group commit: sg_commit applies the changes of any number of tasks in one
-- statement and one transaction. Under load the store sends the changes
-- that queued up while earlier commits were in flight together, so a
-- database busy with many tasks pays the per-statement and per-commit cost
-- (executor set-up, WAL flush, round trip) once per batch instead of once
-- per step. A lone change is a batch of one.
--
-- The batch is all or nothing: when one task's compare-and-swap fails the
-- whole batch rolls back with SG409 naming the tasks, and the store applies
-- the batch's changes one by one to tell each caller its own outcome.
--
-- Every row is found by key: each statement joins the batch's rows to a
-- table's index. The plans are generic and made once per session, possibly
-- while the tables are still small, so only nested loops over index
-- lookups are allowed: a sequential scan or a hash join chosen then would
-- read the whole table on every commit once it has grown.
--
-- p_change holds the batch's rows by kind; every row names its task.
-- Leases (p_leases with p_lease_ms per step), sends (p_queues, p_payloads,
-- p_delays) and acks (p_ack_queues, p_ack_ids) are parallel arrays.
CREATE OR REPLACE FUNCTION sg_commit(
    p_change jsonb,
    p_queues text[], p_payloads bytea[], p_delays bigint[], p_leases uuid[], p_lease_ms bigint[],
    p_ack_queues text[], p_ack_ids bigint[])
RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_change ? 'new_tasks' THEN
        INSERT INTO sg_namespaces (name)
        SELECT DISTINCT t.namespace FROM jsonb_to_recordset(p_change -> 'new_tasks') AS t (namespace text)
        ON CONFLICT DO NOTHING;
        INSERT INTO sg_tasks (id, namespace, name, version, context, state, idempotency_key, priority,
                              result, error, created_at, updated_at, completed_at, run_at, trace, transitions)
        SELECT t.id, t.namespace, t.name, t.version, coalesce(t.context, 'null'), t.state, t.idempotency_key,
               t.priority, t.result, t.error, t.created_at, t.updated_at, t.completed_at, t.run_at,
               nullif(t.trace, 'null'), t.transitions
          FROM jsonb_to_recordset(p_change -> 'new_tasks') AS t (
               id uuid, namespace text, name text, version text, context jsonb, state text, idempotency_key text,
               priority integer, result jsonb, error jsonb, created_at timestamptz, updated_at timestamptz,
               completed_at timestamptz, run_at timestamptz, trace jsonb, transitions integer);
    END IF;

    -- Each task's optimistic lock and its own compare-and-swap: one row update per task.
    IF p_change ? 'tasks' THEN
        -- A commit of several tasks locks their rows in one order (by id)
        -- before it changes them: commits of other processes whose batches
        -- overlap wait for each other instead of deadlocking. A commit of
        -- one task (most) takes its one lock with the update itself: one
        -- statement fewer, 8% less PostgreSQL CPU a step.
        IF jsonb_array_length(p_change -> 'tasks') > 1 THEN
            PERFORM 1 FROM sg_tasks t
             WHERE t.id IN (SELECT m.id FROM jsonb_to_recordset(p_change -> 'tasks') AS m (id uuid))
             ORDER BY t.id
               FOR UPDATE;
        END IF;
        UPDATE sg_tasks t
           SET lock_version = t.lock_version + CASE WHEN m.lock IS NULL THEN 0 ELSE 1 END,
               transitions = t.transitions + m.n,
               state = coalesce(m."to", t.state),
               updated_at = coalesce(m.at, t.updated_at),
               result = coalesce(nullif(m.result, 'null'), t.result),
               -- A task that leaves an end (an operator's repair) drops its error and end time.
               error = CASE WHEN m.error IS NOT NULL AND m.error <> 'null' THEN m.error
                            WHEN m."from" IN ('complete', 'error', 'cancelled', 'resolved_manually')
                             AND m."to" NOT IN ('complete', 'error', 'cancelled', 'resolved_manually') THEN NULL
                            ELSE t.error END,
               completed_at = CASE WHEN m."to" IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                   THEN m.at
                                   WHEN m."from" IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                   THEN NULL
                                   ELSE t.completed_at END
          FROM jsonb_to_recordset(p_change -> 'tasks') AS m (
               id uuid, lock bigint, "from" text, "to" text, at timestamptz, result jsonb, error jsonb, n integer)
         WHERE t.id = m.id
           AND (m.lock IS NULL OR t.lock_version = m.lock)
           AND (m."from" IS NULL OR t.state = m."from");
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> jsonb_array_length(p_change -> 'tasks') THEN
            PERFORM sg_conflict(format('task %s was changed concurrently',
                (SELECT string_agg(m.id::text, ', ') FROM jsonb_to_recordset(p_change -> 'tasks') AS m (id uuid))));
        END IF;
    END IF;

    -- A new step is created leased when it is ready at once (a task's first steps).
    IF p_change ? 'new_steps' THEN
        INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                              max_attempts, timeout_seconds, batch_size, backoff_until, cursor, outcome, created_at,
                              claimed_until, transitions)
        SELECT s.id, s.task_id, s.name, s.template_step, s.step_type, s.handler, coalesce(s.config, 'null'),
               s.state, s.attempts, s.max_attempts, s.timeout_seconds, s.batch_size, s.backoff_until, s.cursor,
               s.outcome, s.created_at,
               clock_timestamp() + make_interval(secs => l.ms / 1000.0), s.transitions
          FROM jsonb_to_recordset(p_change -> 'new_steps') AS s (
               id uuid, task_id uuid, name text, template_step text, step_type text, handler text, config jsonb,
               state text, attempts integer, max_attempts integer, timeout_seconds double precision,
               batch_size bigint, backoff_until timestamptz, cursor jsonb, outcome jsonb, created_at timestamptz,
               transitions integer)
          LEFT JOIN unnest(p_leases, p_lease_ms) AS l (id, ms) ON l.id = s.id;
    END IF;

    IF p_change ? 'new_edges' THEN
        INSERT INTO sg_edges (task_id, from_step, to_step)
        SELECT e.task_id, e."from", e."to"
          FROM jsonb_to_recordset(p_change -> 'new_edges') AS e (task_id uuid, "from" uuid, "to" uuid);
    END IF;

    IF p_change ? 'steps' THEN
        UPDATE sg_steps s
           SET state = m."to", attempts = m.attempts, backoff_until = m.backoff_until, outcome = m.outcome,
               max_attempts = coalesce(m.max_attempts, s.max_attempts),
               transitions = s.transitions + m.n,
               claimed_until = coalesce(clock_timestamp() + make_interval(secs => l.ms / 1000.0), s.claimed_until)
          FROM jsonb_to_recordset(p_change -> 'steps') AS m (
               id uuid, task_id uuid, "from" text, "to" text, attempts integer, backoff_until timestamptz,
               outcome jsonb, max_attempts integer, n integer)
          LEFT JOIN unnest(p_leases, p_lease_ms) AS l (id, ms) ON l.id = m.id
         WHERE s.id = m.id AND s.task_id = m.task_id
           AND (m."from" IS NULL OR s.state = m."from");
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> jsonb_array_length(p_change -> 'steps') THEN
            PERFORM sg_conflict(format('task %s: a step is no longer in the state this change expects',
                (SELECT string_agg(DISTINCT m.task_id::text, ', ')
                   FROM jsonb_to_recordset(p_change -> 'steps') AS m (task_id uuid))));
        END IF;
    END IF;

    -- The audit rows, appended: the steps and tasks above now count them,
    -- so the k-th of an entity's n rows here is its (count - n + k)-th.
    IF p_change ? 'step_transitions' THEN
        INSERT INTO sg_step_transitions
            (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, metadata, created_at)
        SELECT t.task_id, t.step_id, t.step_name, t."from", t."to", t.attempt, s.transitions - t.n + t.seq,
               coalesce(t.metadata, 'null'), t.at
          FROM ROWS FROM (jsonb_to_recordset(p_change -> 'step_transitions') AS (
               task_id uuid, step_id uuid, step_name text, "from" text, "to" text, attempt integer,
               at timestamptz, metadata jsonb, seq integer, n integer)) WITH ORDINALITY
               AS t (task_id, step_id, step_name, "from", "to", attempt, at, metadata, seq, n, ord)
          JOIN sg_steps s ON s.id = t.step_id
         ORDER BY t.ord;
    END IF;

    IF p_change ? 'task_transitions' THEN
        INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, metadata, created_at)
        SELECT t.task_id, t."from", t."to", k.transitions - t.n + t.seq, coalesce(t.metadata, 'null'), t.at
          FROM ROWS FROM (jsonb_to_recordset(p_change -> 'task_transitions') AS (
               task_id uuid, "from" text, "to" text, at timestamptz, metadata jsonb, seq integer, n integer))
               WITH ORDINALITY AS t (task_id, "from", "to", at, metadata, seq, n, ord)
          JOIN sg_tasks k ON k.id = t.task_id
         ORDER BY t.ord;
        PERFORM pg_notify('stepgraph_task', t.task_id::text)
           FROM jsonb_to_recordset(p_change -> 'task_transitions') AS t (task_id uuid, "to" text, last boolean)
          WHERE t.last AND t."to" IN ('complete', 'error', 'cancelled', 'resolved_manually');
    END IF;

    IF cardinality(p_queues) > 0 THEN
        INSERT INTO sg_queue (queue, payload, visible_at)
        SELECT m.q, m.p, clock_timestamp() + make_interval(secs => m.d / 1000.0)
          FROM unnest(p_queues, p_payloads, p_delays) WITH ORDINALITY AS m (q, p, d, ord)
         ORDER BY m.ord;
        PERFORM pg_notify('stepgraph_queue', q) FROM (SELECT DISTINCT q FROM unnest(p_queues) AS q) x;
    END IF;
    IF cardinality(p_ack_ids) > 0 THEN
        DELETE FROM sg_queue q
         USING unnest(p_ack_queues, p_ack_ids) AS a (queue, id)
         WHERE q.id = a.id AND q.queue = a.queue;
    END IF;
END $$;

-- A worker that claims a step message next reads the step to start it
-- (sg_start_step): two round trips, one after the other, for every step
-- that comes through the queue. sg_receive_started claims like sg_receive
-- and reads each claimed step's start in the same statement, as
-- sg_start_step without the InProgress mark answers it.
--
-- The read is best effort: a payload that is not a step message, or any
-- error reading it, gives NULL and the worker asks sg_start_step itself.
CREATE OR REPLACE FUNCTION sg_try_start(p_payload bytea) RETURNS json
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    m json;
BEGIN
    m := convert_from(p_payload, 'UTF8')::json;
    RETURN sg_start_step((m ->> 'step_id')::uuid, (m ->> 'attempt')::integer, false);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

-- sg_receive_any, with each claimed step's start read in the same statement.
CREATE OR REPLACE FUNCTION sg_receive_any_started(p_queues text[], p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, queue text, payload bytea, delivery_count integer, next_visible timestamptz,
               started json)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    SELECT r.id, r.queue, r.payload, r.delivery_count, r.next_visible,
           CASE WHEN r.id IS NOT NULL THEN sg_try_start(r.payload) END
      FROM sg_receive_any(p_queues, p_max, p_visibility_ms) r;
END $$;

-- sg_receive, with each claimed step's start read in the same statement
-- (kept, like sg_receive, for the version before sg_receive_any).
CREATE OR REPLACE FUNCTION sg_receive_started(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer, next_visible timestamptz, started json)
LANGUAGE sql AS $$
    SELECT r.id, r.payload, r.delivery_count, r.next_visible, r.started
      FROM sg_receive_any_started(ARRAY[p_queue], p_max, p_visibility_ms) r;
$$;

-- A claimed message that cannot be processed, moved to the dead letters
-- with the reason (in one statement, so it is in exactly one of the two).
CREATE OR REPLACE FUNCTION sg_dead_letter(p_queue text, p_id bigint, p_reason text)
RETURNS void LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM sg_queue WHERE id = p_id AND queue = p_queue RETURNING *)
    INSERT INTO sg_dead_letters (id, queue, payload, delivery_count, reason, enqueued_at)
    SELECT id, queue, payload, delivery_count, p_reason, enqueued_at FROM gone
    ON CONFLICT (id) DO NOTHING;
$$;

-- Ends a task that cannot go on (its message was dead-lettered) without
-- decoding any of its rows, which may be what cannot be read: a
-- compare-and-swap from p_from along p_path (the state machine's way to
-- 'error', computed by the caller), p_error as the task's error, and every
-- step not yet ended (but an 'error' one) cancelled, each with an audit
-- row carrying p_meta. False when the task was no longer in p_from.
CREATE OR REPLACE FUNCTION sg_fail_task(p_task uuid, p_from text, p_path text[], p_error jsonb, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_from text := p_from;
    v_to text;
    v_sort integer;
    v_task_sort integer;
    s record;
BEGIN
    UPDATE sg_tasks SET state = 'error', error = p_error, updated_at = v_now, completed_at = v_now,
                        lock_version = lock_version + 1, transitions = transitions + cardinality(p_path)
     WHERE id = p_task AND state = p_from
    RETURNING transitions - cardinality(p_path) INTO v_task_sort;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR s IN SELECT id, name, state, attempts FROM sg_steps
              WHERE task_id = p_task AND state NOT IN ('complete', 'cancelled', 'resolved_manually', 'error')
              ORDER BY id FOR UPDATE LOOP
        UPDATE sg_steps SET state = 'cancelled', transitions = transitions + 1
         WHERE id = s.id RETURNING transitions INTO v_sort;
        PERFORM sg_record_step_transition(p_task, s.id, s.name, s.state, 'cancelled', s.attempts, v_sort, v_now,
                                          p_meta);
    END LOOP;
    FOREACH v_to IN ARRAY p_path LOOP
        v_task_sort := v_task_sort + 1;
        INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, metadata, created_at)
        VALUES (p_task, v_from, v_to, v_task_sort, CASE WHEN v_to = 'error' THEN p_meta ELSE '{}'::jsonb END, v_now);
        v_from := v_to;
    END LOOP;
    PERFORM pg_notify('stepgraph_task', p_task::text);
    RETURN true;
END $$;

-- History partitions. The audit tables are partitioned by RANGE (task_id);
-- task ids are UUIDv7s, so a range is a window of creation time, and the
-- smallest id made at a time is that time in milliseconds followed by
-- zeros.
CREATE OR REPLACE FUNCTION sg_uuid_at(p_at timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM p_at) * 1000)::bigint), 12, '0') || repeat('0', 20))::uuid;
$$;

-- Makes the next partition of an audit table, p_width wide, from where its
-- last one ends (or from p_lead ahead of now, when that is later: the ids
-- of a gap stay in the default partition), if it begins before p_until;
-- whether it did. Rows the default partition took for the new range
-- (nobody made it in time) move into it.
--
-- A range is attached only while its ids are still in the future: a commit
-- routed to the default partition before the range was attached and
-- inserting after it would fail on the default partition's constraint.
-- ATTACH takes the parent in SHARE UPDATE EXCLUSIVE mode, which does not
-- stop commits appending to other partitions, and the default partition in
-- ACCESS EXCLUSIVE mode while it checks it holds no row of the range: given
-- up after p_lock_timeout_ms (SQLSTATE 55P03; the next pass tries again).
-- One partition per transaction, so that no two locks are taken in an order
-- a commit could take the other way. One process at a time: another one
-- running it makes this call return false.
CREATE OR REPLACE FUNCTION sg_add_partition(
    p_table text, p_width interval, p_lead interval, p_until timestamptz, p_lock bigint, p_lock_timeout_ms integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_lower timestamptz;
    v_name text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN false;
    END IF;
    SELECT greatest(max(upper_at), now() + p_lead) INTO v_lower FROM sg_partitions WHERE parent = p_table;
    IF v_lower >= p_until THEN
        RETURN false;
    END IF;
    PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    v_name := p_table || '_p' || to_char(v_lower AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', v_name, p_table);
    EXECUTE format('WITH m AS (DELETE FROM %I WHERE task_id >= $1 AND task_id < $2 RETURNING *)
                    INSERT INTO %I SELECT * FROM m', p_table || '_default', v_name)
      USING sg_uuid_at(v_lower), sg_uuid_at(v_lower + p_width);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', p_table, v_name,
                   sg_uuid_at(v_lower), sg_uuid_at(v_lower + p_width));
    INSERT INTO sg_partitions (name, parent, lower_at, upper_at)
    VALUES (v_name, p_table, v_lower, v_lower + p_width);
    RETURN true;
END $$;

-- Drops one partition (and so every audit row in it) at once; the rows of
-- tasks that are still there (kept longer: failed, or by their template)
-- move to the default partition first, where retention deletes them with
-- their task. DETACH and DROP take the parent in ACCESS EXCLUSIVE mode,
-- which commits appending audit rows wait for: the lock is given up after
-- p_lock_timeout_ms (the call fails with SQLSTATE 55P03, and the next pass
-- tries again) and held only while the remaining tasks' rows are copied.
-- The number of rows moved, or NULL when another process is at it.
CREATE OR REPLACE FUNCTION sg_drop_partition(p_name text, p_lock bigint, p_lock_timeout_ms integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    p sg_partitions;
    v_moved bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO p FROM sg_partitions WHERE name = p_name;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', p.parent, p.name);
    EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE task_id IN
                        (SELECT id FROM sg_tasks WHERE id >= $1 AND id < $2)', p.parent || '_default', p.name)
      USING sg_uuid_at(p.lower_at), sg_uuid_at(p.upper_at);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    EXECUTE format('DROP TABLE %I', p.name);
    DELETE FROM sg_partitions WHERE name = p.name;
    RETURN v_moved;
END $$;

-- Day partitions for a history older than any partition (a bench fills one
-- by SQL): from p_from's day up to where the first partition begins, or
-- the start of today; how many. Only for ranges the default partition
-- holds no row of (the bench calls it before it fills).
CREATE OR REPLACE FUNCTION sg_add_past_partitions(p_table text, p_from timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_day timestamptz := date_trunc('day', p_from, 'UTC');
    v_until timestamptz;
    v_name text;
    v_made integer := 0;
BEGIN
    SELECT coalesce(min(lower_at), date_trunc('day', now(), 'UTC')) INTO v_until
      FROM sg_partitions WHERE parent = p_table;
    WHILE v_day + interval '1 day' <= v_until LOOP
        v_name := p_table || '_p' || to_char(v_day AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', v_name, p_table,
                       sg_uuid_at(v_day), sg_uuid_at(v_day + interval '1 day'));
        INSERT INTO sg_partitions (name, parent, lower_at, upper_at)
        VALUES (v_name, p_table, v_day, v_day + interval '1 day');
        v_day := v_day + interval '1 day';
        v_made := v_made + 1;
    END LOOP;
    RETURN v_made;
END $$;
