-- Claims walk the ready index in its own order, oldest visible first, and
-- stop after p_max: compared with clock_timestamp() (volatile) the
-- visibility bound was only a filter, so every claim read and sorted all of
-- the queue's messages, and a deep queue (a thousand tasks submitted at
-- once) made each claim cost as much as the queue was long. now() is the
-- claim's own start; a message that becomes visible after it waits for the
-- next claim.
--
-- A claim that gets fewer than p_max also says when the queue's next
-- message becomes visible (a delayed one, or one claimed and not yet
-- acknowledged): the receiver need not claim again before then unless a
-- NOTIFY says something was sent.
CREATE OR REPLACE FUNCTION sg_receive(p_queue text, p_max integer, p_visibility_ms bigint)
RETURNS TABLE (id bigint, payload bytea, delivery_count integer, next_visible timestamptz)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    v_claimed integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE sg_queue m
       SET visible_at = clock_timestamp() + make_interval(secs => p_visibility_ms / 1000.0),
           delivery_count = m.delivery_count + 1
      FROM (SELECT q.id FROM sg_queue q
             WHERE q.queue = p_queue AND q.visible_at <= now()
             ORDER BY q.visible_at, q.id LIMIT p_max FOR UPDATE SKIP LOCKED) c
     WHERE m.id = c.id
    RETURNING m.id, m.payload, m.delivery_count, NULL::timestamptz;
    GET DIAGNOSTICS v_claimed = ROW_COUNT;
    IF v_claimed < p_max THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bytea, NULL::integer, min(q.visible_at)
                       FROM sg_queue q WHERE q.queue = p_queue;
    END IF;
END $$;
