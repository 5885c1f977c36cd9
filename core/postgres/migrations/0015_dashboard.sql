-- What the dashboard's overview reads.
--
-- The last hour's step attempts a minute at a time: the step audit rows
-- are appended in time order, so a BRIN index on their time finds the
-- hour's pages from a few index pages, and costs an insert next to nothing
-- (a B-tree here would add an index entry to every step transition).
CREATE INDEX sg_step_transitions_at ON sg_step_transitions USING brin (created_at);

-- Each worker's circuit breakers that are not closed, as its last
-- heartbeat told: [{"handler", "state"}].
ALTER TABLE sg_workers ADD COLUMN circuits jsonb NOT NULL DEFAULT '[]';
