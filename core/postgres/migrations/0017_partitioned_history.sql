-- The audit trails become partitioned by task id, so that expiring old
-- history is dropping a partition rather than deleting its rows.
--
-- Task ids are UUIDv7s: their first 48 bits are the creation time in
-- milliseconds, so a RANGE of ids is a window of creation time, and every
-- lookup by task (all the hot path does) touches one partition. The default
-- partition holds what no range covers: the audit rows of tasks that
-- outlive their partition (moved there when it is dropped), and ids that
-- are not UUIDv7s or arrive before their partition was made.
--
-- Nothing on the hot path reads these tables any more: a row's sort_key
-- comes from a counter on its step or task (the `transitions` columns
-- below) rather than from updating the previous row's `most_recent` flag,
-- so a commit only appends to one partition. `most_recent` is gone; the
-- most recent row of a step is the one whose sort_key is its counter.
--
-- The tables are copied, not altered in place: on a database with a long
-- history this migration takes a while (it runs in migrate's transaction,
-- which holds the tables' locks until it ends).

ALTER TABLE sg_steps ADD COLUMN transitions integer NOT NULL DEFAULT 0;
ALTER TABLE sg_tasks ADD COLUMN transitions integer NOT NULL DEFAULT 0;

UPDATE sg_steps s SET transitions = m.k
  FROM (SELECT step_id, max(sort_key) AS k FROM sg_step_transitions GROUP BY step_id) m
 WHERE s.id = m.step_id;
UPDATE sg_tasks t SET transitions = m.k
  FROM (SELECT task_id, max(sort_key) AS k FROM sg_task_transitions GROUP BY task_id) m
 WHERE t.id = m.task_id;

ALTER TABLE sg_task_transitions RENAME TO sg_task_transitions_unpartitioned;
ALTER TABLE sg_step_transitions RENAME TO sg_step_transitions_unpartitioned;
DROP INDEX sg_task_transitions_failed, sg_step_transitions_failed, sg_step_transitions_at;

-- `id` stays as the order rows were written in (a step's trail is read in
-- that order); uniqueness is by entity and sort_key, which must include the
-- partition key.
CREATE TABLE sg_task_transitions (
    id bigint NOT NULL,
    task_id uuid NOT NULL,
    from_state text,
    to_state text NOT NULL,
    sort_key integer NOT NULL,
    metadata jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT sg_task_transitions_key UNIQUE (task_id, sort_key)
) PARTITION BY RANGE (task_id);

CREATE TABLE sg_step_transitions (
    id bigint NOT NULL,
    task_id uuid NOT NULL,
    step_id uuid NOT NULL,
    step_name text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    attempt integer NOT NULL,
    sort_key integer NOT NULL,
    metadata jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT sg_step_transitions_key UNIQUE (task_id, step_id, sort_key)
) PARTITION BY RANGE (task_id);

ALTER SEQUENCE sg_task_transitions_id_seq OWNED BY sg_task_transitions.id;
ALTER SEQUENCE sg_step_transitions_id_seq OWNED BY sg_step_transitions.id;
ALTER TABLE sg_task_transitions ALTER COLUMN id SET DEFAULT nextval('sg_task_transitions_id_seq');
ALTER TABLE sg_step_transitions ALTER COLUMN id SET DEFAULT nextval('sg_step_transitions_id_seq');

CREATE INDEX sg_task_transitions_failed ON sg_task_transitions (created_at) WHERE to_state = 'error';
CREATE INDEX sg_step_transitions_failed ON sg_step_transitions (created_at)
    WHERE to_state IN ('error', 'waiting_for_retry');
CREATE INDEX sg_step_transitions_at ON sg_step_transitions USING brin (created_at);

CREATE TABLE sg_task_transitions_default PARTITION OF sg_task_transitions DEFAULT;
CREATE TABLE sg_step_transitions_default PARTITION OF sg_step_transitions DEFAULT;

-- The range partitions the engine made (and drops): by table, the creation
-- times their task ids cover, [lower_at, upper_at).
CREATE TABLE sg_partitions (
    name text PRIMARY KEY,
    parent text NOT NULL,
    lower_at timestamptz NOT NULL,
    upper_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sg_partitions_upper ON sg_partitions (upper_at);

-- One partition a day from the day of the oldest UUIDv7 task id in the
-- history to the start of today, before the rows are copied in. The
-- engine (`serve`) makes the later ones, from there on, at the width it is
-- configured with; until it does, new rows go to the default partition.
DO $$
DECLARE
    v_first timestamptz;
    v_day timestamptz;
    v_table text;
    v_name text;
BEGIN
    SELECT to_timestamp(min(('x' || substr(replace(task_id::text, '-', ''), 1, 12))::bit(48)::bigint) / 1000.0)
      INTO v_first
      FROM (SELECT task_id FROM sg_task_transitions_unpartitioned
             WHERE substr(task_id::text, 15, 1) = '7'
            UNION ALL
            SELECT id FROM sg_tasks WHERE substr(id::text, 15, 1) = '7') ids;
    v_day := date_trunc('day', least(coalesce(v_first, now()), now()), 'UTC');
    WHILE v_day < date_trunc('day', now(), 'UTC') LOOP
        FOREACH v_table IN ARRAY ARRAY['sg_task_transitions', 'sg_step_transitions'] LOOP
            v_name := v_table || '_p' || to_char(v_day AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', v_name, v_table,
                (lpad(to_hex((extract(epoch FROM v_day) * 1000)::bigint), 12, '0') || repeat('0', 20))::uuid,
                (lpad(to_hex((extract(epoch FROM v_day + interval '1 day') * 1000)::bigint), 12, '0')
                    || repeat('0', 20))::uuid);
            INSERT INTO sg_partitions (name, parent, lower_at, upper_at)
            VALUES (v_name, v_table, v_day, v_day + interval '1 day');
        END LOOP;
        v_day := v_day + interval '1 day';
    END LOOP;
END $$;

INSERT INTO sg_task_transitions (id, task_id, from_state, to_state, sort_key, metadata, created_at)
SELECT id, task_id, from_state, to_state, sort_key, metadata, created_at FROM sg_task_transitions_unpartitioned;
INSERT INTO sg_step_transitions
    (id, task_id, step_id, step_name, from_state, to_state, attempt, sort_key, metadata, created_at)
SELECT id, task_id, step_id, step_name, from_state, to_state, attempt, sort_key, metadata, created_at
  FROM sg_step_transitions_unpartitioned;

DROP TABLE sg_task_transitions_unpartitioned;
DROP TABLE sg_step_transitions_unpartitioned;

-- Functions whose bodies name the dropped columns are replaced by
-- functions.sql after this; those whose signature changes are dropped here.
DROP FUNCTION IF EXISTS sg_record_step_transition(uuid, uuid, text, text, text, integer, timestamptz, jsonb);
