-- Delayed tasks and cron schedules. A delayed task is stored `scheduled`
-- with the time it starts (`run_at`); the scheduler of every `serve`
-- finds the due ones through a partial index that holds only those.
-- A schedule is kept as its JSON record, with its next tick beside it for
-- the compare-and-swap that moves it on.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

ALTER TABLE sg_tasks ADD COLUMN run_at timestamptz;
CREATE INDEX sg_tasks_due ON sg_tasks (run_at) WHERE state = 'scheduled';

CREATE TABLE sg_schedules (
    name text PRIMARY KEY,
    body jsonb NOT NULL,
    next_run_at timestamptz
);
