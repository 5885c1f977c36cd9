-- Faster orchestration commits: sg_apply applies each kind of op as one
-- set-based statement instead of row by row, and sg_graph builds json rather
-- than jsonb (the client parses it once anyway).

DROP FUNCTION sg_graph(uuid);
CREATE FUNCTION sg_graph(p_task uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'lock_version', t.lock_version,
        'task', row_to_json(t),
        'steps', coalesce((SELECT json_agg(s) FROM sg_steps s WHERE s.task_id = t.id), '[]'),
        'edges', coalesce((SELECT json_agg(json_build_object('from', e.from_step, 'to', e.to_step))
                             FROM sg_edges e WHERE e.task_id = t.id), '[]'))
      FROM sg_tasks t WHERE t.id = p_task;
$$;

CREATE OR REPLACE FUNCTION sg_apply(
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
