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

CREATE FUNCTION sg_commit(
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
                              result, error, created_at, updated_at, completed_at)
        SELECT t.id, t.namespace, t.name, t.version, coalesce(t.context, 'null'), t.state, t.idempotency_key,
               t.priority, t.result, t.error, t.created_at, t.updated_at, t.completed_at
          FROM jsonb_to_recordset(p_change -> 'new_tasks') AS t (
               id uuid, namespace text, name text, version text, context jsonb, state text, idempotency_key text,
               priority integer, result jsonb, error jsonb, created_at timestamptz, updated_at timestamptz,
               completed_at timestamptz);
    END IF;

    -- Each task's optimistic lock and its own compare-and-swap: one row update per task.
    IF p_change ? 'tasks' THEN
        UPDATE sg_tasks t
           SET lock_version = t.lock_version + CASE WHEN m.lock IS NULL THEN 0 ELSE 1 END,
               state = coalesce(m."to", t.state),
               updated_at = coalesce(m.at, t.updated_at),
               result = coalesce(nullif(m.result, 'null'), t.result),
               error = coalesce(nullif(m.error, 'null'), t.error),
               completed_at = CASE WHEN m."to" IN ('complete', 'error', 'cancelled', 'resolved_manually')
                                   THEN m.at ELSE t.completed_at END
          FROM jsonb_to_recordset(p_change -> 'tasks') AS m (
               id uuid, lock bigint, "from" text, "to" text, at timestamptz, result jsonb, error jsonb)
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
                              claimed_until)
        SELECT s.id, s.task_id, s.name, s.template_step, s.step_type, s.handler, coalesce(s.config, 'null'),
               s.state, s.attempts, s.max_attempts, s.timeout_seconds, s.batch_size, s.backoff_until, s.cursor,
               s.outcome, s.created_at,
               clock_timestamp() + make_interval(secs => l.ms / 1000.0)
          FROM jsonb_to_recordset(p_change -> 'new_steps') AS s (
               id uuid, task_id uuid, name text, template_step text, step_type text, handler text, config jsonb,
               state text, attempts integer, max_attempts integer, timeout_seconds double precision,
               batch_size bigint, backoff_until timestamptz, cursor jsonb, outcome jsonb, created_at timestamptz)
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
               claimed_until = coalesce(clock_timestamp() + make_interval(secs => l.ms / 1000.0), s.claimed_until)
          FROM jsonb_to_recordset(p_change -> 'steps') AS m (
               id uuid, task_id uuid, "from" text, "to" text, attempts integer, backoff_until timestamptz,
               outcome jsonb)
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

    -- The audit rows: each step's last one supersedes its most recent one (if any).
    IF p_change ? 'step_transitions' THEN
        WITH prev AS (
            UPDATE sg_step_transitions p SET most_recent = false
              FROM jsonb_to_recordset(p_change -> 'step_transitions') AS f (step_id uuid, seq integer)
             WHERE f.seq = 1 AND p.step_id = f.step_id AND p.most_recent
            RETURNING p.step_id, p.sort_key)
        INSERT INTO sg_step_transitions
            (task_id, step_id, step_name, from_state, to_state, attempt, sort_key, most_recent, metadata, created_at)
        SELECT t.task_id, t.step_id, t.step_name, t."from", t."to", t.attempt, coalesce(prev.sort_key, 0) + t.seq,
               t.last, coalesce(t.metadata, 'null'), t.at
          FROM jsonb_to_recordset(p_change -> 'step_transitions') AS t (
               task_id uuid, step_id uuid, step_name text, "from" text, "to" text, attempt integer,
               at timestamptz, metadata jsonb, seq integer, last boolean)
          LEFT JOIN prev ON prev.step_id = t.step_id;
    END IF;

    IF p_change ? 'task_transitions' THEN
        WITH prev AS (
            UPDATE sg_task_transitions p SET most_recent = false
              FROM jsonb_to_recordset(p_change -> 'task_transitions') AS f (task_id uuid, seq integer)
             WHERE f.seq = 1 AND p.task_id = f.task_id AND p.most_recent
            RETURNING p.task_id, p.sort_key)
        INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, most_recent, metadata, created_at)
        SELECT t.task_id, t."from", t."to", coalesce(prev.sort_key, 0) + t.seq, t.last,
               coalesce(t.metadata, 'null'), t.at
          FROM jsonb_to_recordset(p_change -> 'task_transitions') AS t (
               task_id uuid, "from" text, "to" text, at timestamptz, metadata jsonb, seq integer, last boolean)
          LEFT JOIN prev ON prev.task_id = t.task_id;
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

DROP FUNCTION sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], uuid[], bigint, text, bigint);
