-- Dead letters of the PostgreSQL queue: a message that cannot be processed
-- (undecodable, for a step that does not exist, or failing the same way on
-- every one of max_deliveries deliveries) moves here with the reason,
-- out of the way of the messages behind it, and kept for an operator.

-- The functions this migration created or replaced are defined, as they
-- are now, in functions.sql, which migrate applies after the migrations.

CREATE TABLE sg_dead_letters (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    payload bytea NOT NULL,
    delivery_count integer NOT NULL,
    reason text NOT NULL,
    enqueued_at timestamptz NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sg_dead_letters_queue ON sg_dead_letters (queue, dead_at);
