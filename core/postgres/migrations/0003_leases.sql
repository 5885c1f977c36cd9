-- Eager dispatch by lease.
--
-- A step that the committing worker takes for itself (it has a free slot and
-- serves the step's queue) no longer gets a queue message written claimed and
-- deleted one commit later: the commit that enqueues it leases it to that
-- worker (claimed_until) instead. That saves a queue row inserted and deleted
-- per step on the PostgreSQL queue, and gives a broker (RabbitMQ) eager
-- dispatch too, which it could not have when the claim was a queue row. A
-- lease that runs out on a step still Enqueued or InProgress means its worker
-- died: the orchestrators' sweep (Store::stranded) sends the step's message
-- then, as a visibility timeout would have. A step that moved on keeps its
-- stale lease; the sweep only looks at the two running states.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

ALTER TABLE sg_steps ADD COLUMN claimed_until timestamptz;

DROP FUNCTION IF EXISTS sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], boolean[], bigint, text, bigint);
