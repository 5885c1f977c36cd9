-- sg_start_step(p_mark => false) reads what a handler needs without writing
-- the Enqueued -> InProgress transition: a worker that finishes quickly writes
-- it (with the time the handler started) in the commit that records the
-- outcome, so a short step costs one durable commit instead of two. It also
-- returns the task's graph, against which that commit is made (optimistic
-- lock: if the task changed meanwhile, the worker reads it again).

DROP FUNCTION sg_start_step(uuid, integer);
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

-- sg_receive also says, when it claims nothing, when the queue's next
-- message becomes visible: an idle consumer knows how long to sleep without
-- asking again.
DROP FUNCTION sg_receive(text, integer, bigint);
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
