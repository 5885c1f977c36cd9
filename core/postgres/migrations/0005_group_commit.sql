-- Group commit: sg_commit applies the changes of any number of tasks in one
-- statement and one transaction. Under load the store sends the changes
-- that queued up while earlier commits were in flight together, so a
-- database busy with many tasks pays the per-statement and per-commit cost
-- (executor set-up, WAL flush, round trip) once per batch instead of once
-- per step. A lone change is a batch of one.
--
-- The batch is all or nothing: when one task's compare-and-swap fails the
-- whole batch rolls back with SG409 naming the tasks, and the store applies
-- the batch's changes one by one to tell each caller its own outcome.
--
-- Every row is found by key: each statement joins the batch's rows to a
-- table's index. The plans are generic and made once per session, possibly
-- while the tables are still small, so only nested loops over index
-- lookups are allowed: a sequential scan or a hash join chosen then would
-- read the whole table on every commit once it has grown.
--
-- p_change holds the batch's rows by kind; every row names its task.
-- Leases (p_leases with p_lease_ms per step), sends (p_queues, p_payloads,
-- p_delays) and acks (p_ack_queues, p_ack_ids) are parallel arrays.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

DROP FUNCTION IF EXISTS sg_apply(uuid, bigint, jsonb, text[], bytea[], bigint[], uuid[], bigint, text, bigint);
