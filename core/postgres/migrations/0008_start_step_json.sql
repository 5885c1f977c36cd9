-- sg_start_step answers in json, not jsonb: its graph comes from sg_graph
-- as json text, and casting it to jsonb parsed the whole graph (the task's
-- context, every step's outcome) once more on every step start, only for
-- the client to receive it as text again.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

DROP FUNCTION IF EXISTS sg_start_step(uuid, integer, boolean);
