-- Finding tasks (GET /v1/tasks, GET /v1/stats).
--
-- A list is newest first, and ids are time-ordered (UUIDv7): a page of a
-- state is a backward walk of (state, id) from the cursor, read no further
-- than the page. It replaces the index on state alone, which every state
-- change maintained already, so a transition still updates one index.
--
-- Failures and retries of the last hour are found by partial indexes that
-- hold only such audit rows (a small share of them), so the hot path pays
-- for an index entry only when something failed.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

DROP INDEX IF EXISTS sg_tasks_state;
CREATE INDEX sg_tasks_state_id ON sg_tasks (state, id);
CREATE INDEX sg_task_transitions_failed ON sg_task_transitions (created_at) WHERE to_state = 'error';
CREATE INDEX sg_step_transitions_failed ON sg_step_transitions (created_at)
    WHERE to_state IN ('error', 'waiting_for_retry');
