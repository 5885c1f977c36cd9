-- A worker that claims a step message next reads the step to start it
-- (sg_start_step): two round trips, one after the other, for every step
-- that comes through the queue. sg_receive_started claims like sg_receive
-- and reads each claimed step's start in the same statement, as
-- sg_start_step without the InProgress mark answers it.
--
-- The read is best effort: a payload that is not a step message, or any
-- error reading it, gives NULL and the worker asks sg_start_step itself.

CREATE FUNCTION sg_try_start(p_payload bytea) RETURNS json
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    m json;
BEGIN
    m := convert_from(p_payload, 'UTF8')::json;
    RETURN sg_start_step((m ->> 'step_id')::uuid, (m ->> 'attempt')::integer, false);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

CREATE FUNCTION sg_receive_started(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer, next_visible timestamptz, started json)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    SELECT r.id, r.payload, r.delivery_count, r.next_visible,
           CASE WHEN r.id IS NOT NULL THEN sg_try_start(r.payload) END
      FROM sg_receive(p_queue, p_max, p_visibility_ms) r;
END $$;
