-- A task's trace context (OpenTelemetry): its trace, its own span and the
-- caller's span it continues, as {"trace_id", "span_id", "parent_span_id",
-- "sampled"}. Set at creation when the task is traced, never changed; the
-- steps' messages carry it to the workers, and the sweep reads it here for
-- the messages it sends again.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

ALTER TABLE sg_tasks ADD COLUMN trace jsonb;
