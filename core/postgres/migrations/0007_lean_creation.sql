-- Less to write per task created.
--
-- sg_steps_task duplicated the leading column of the (task_id, name)
-- unique index, which serves every lookup by task as well: one index entry
-- less per step row written (four at a linear task's creation, two per
-- step after).
--
-- The edges lose their foreign keys to the steps: only sg_commit writes
-- them, in the transaction that inserts both their steps, and each check
-- ran a query and locked the step row (two per edge). Deleting a task
-- still deletes its edges (task_id keeps its key, ON DELETE CASCADE).

DROP INDEX sg_steps_task;
ALTER TABLE sg_edges DROP CONSTRAINT sg_edges_from_step_fkey,
                     DROP CONSTRAINT sg_edges_to_step_fkey;

-- A task's steps in the order they were made (ids are time-ordered), as
-- the API shows them: without the dropped index the rows came back in
-- the order of the (task_id, name) index.
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
