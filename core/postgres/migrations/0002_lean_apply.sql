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

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

ALTER TABLE sg_step_transitions DROP CONSTRAINT sg_step_transitions_task_id_fkey,
                                DROP CONSTRAINT sg_step_transitions_step_id_fkey;
ALTER TABLE sg_task_transitions DROP CONSTRAINT sg_task_transitions_task_id_fkey;

DROP FUNCTION IF EXISTS sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], text, bigint);
