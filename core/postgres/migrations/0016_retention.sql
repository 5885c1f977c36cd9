-- Retention: ended tasks are removed (or archived, then removed) once they
-- outlive what their template keeps.
--
-- The oldest ended tasks are found by their end: a partial index holds
-- only tasks that ended, so running ones cost it nothing.
CREATE INDEX sg_tasks_ended ON sg_tasks (completed_at) WHERE completed_at IS NOT NULL;

-- What `archive` keeps of a removed task: the task row, its steps, edges
-- and both audit trails as one document, and when it was removed (which
-- also lets the API say that a task it cannot find was removed).
CREATE TABLE sg_archived_tasks (
    id uuid PRIMARY KEY,
    namespace text NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    state text NOT NULL,
    created_at timestamptz NOT NULL,
    completed_at timestamptz,
    archived_at timestamptz NOT NULL DEFAULT now(),
    record jsonb NOT NULL
);
CREATE INDEX sg_archived_tasks_at ON sg_archived_tasks USING brin (archived_at);
