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

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

DROP INDEX sg_steps_task;
ALTER TABLE sg_edges DROP CONSTRAINT sg_edges_from_step_fkey,
                     DROP CONSTRAINT sg_edges_to_step_fkey;
