-- sg_start_step answers in json, not jsonb: its graph comes from sg_graph
-- as json text, and casting it to jsonb parsed the whole graph (the task's
-- context, every step's outcome) once more on every step start, only for
-- the client to receive it as text again.

DROP FUNCTION sg_start_step(uuid, integer, boolean);

CREATE FUNCTION sg_start_step(p_step uuid, p_attempt integer, p_mark boolean) RETURNS json
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
        RETURN json_build_object('status', 'not_found');
    END IF;
    SELECT * INTO tk FROM sg_tasks WHERE id = s.task_id;
    IF tk.state IN ('complete', 'error', 'cancelled', 'resolved_manually') OR s.attempts <> p_attempt THEN
        RETURN json_build_object('status', 'stale', 'state', s.state, 'attempts', s.attempts);
    END IF;
    IF s.state = 'enqueued' THEN
        IF p_mark THEN
            UPDATE sg_steps SET state = 'in_progress' WHERE id = p_step;
            PERFORM sg_record_step_transition(s.task_id, p_step, s.name, 'enqueued', 'in_progress', s.attempts,
                                              clock_timestamp(), '{}');
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
