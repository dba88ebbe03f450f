-- Version 3: batches. Every job of a batch carries its id; its FIRST end (succeeded, failed =
-- dead-lettered, cancelled) is counted by a trigger, in the very statement that ends it
-- (a settle, the cancel of a waiting job, a claim dead-lettering a poison job, any later
-- write), and the count that reaches zero inserts the batch's callback job with the summary
-- between the two halves of its envelope, and wakes its queue's workers. Two transactions
-- ending a batch's last jobs at once both update the batch's row: the second waits for the
-- first and sees its count, so only one reaches zero.
ALTER TABLE dromos_jobs ADD COLUMN batch_id text;
ALTER TABLE dromos_jobs ADD COLUMN batch_counted boolean NOT NULL DEFAULT false;
CREATE INDEX dromos_jobs_batch ON dromos_jobs (batch_id, seq) WHERE batch_id IS NOT NULL;

-- dromos_batches  one row per batch, kept as long as its jobs' results are
--   remaining         jobs not ended yet (a job's first end only)
--   callback_*        the on_complete job (callback_id NULL: none) as enqueued; its envelope
--                     split at the summary placeholder (callback_tail NULL: no placeholder)
CREATE TABLE dromos_batches (
    id                text             PRIMARY KEY,
    total             integer          NOT NULL,
    remaining         integer          NOT NULL,
    succeeded         integer          NOT NULL DEFAULT 0,
    failed            integer          NOT NULL DEFAULT 0,
    cancelled         integer          NOT NULL DEFAULT 0,
    created_at        double precision NOT NULL,
    finished_at       double precision,
    callback_id       text,
    callback_task     text,
    callback_queue    text,
    callback_priority integer,
    callback_head     bytea,
    callback_tail     bytea,
    callback_url      text
);
CREATE INDEX dromos_batches_finished ON dromos_batches (finished_at)
    WHERE finished_at IS NOT NULL;

-- search_path is fixed to this schema (FROM CURRENT: the migration runs with it), so that
-- the trigger finds its tables whatever the session's path is.
CREATE FUNCTION dromos_count_batch_job() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    b dromos_batches;
    summary text;
BEGIN
    NEW.batch_counted := true;
    UPDATE dromos_batches SET remaining = remaining - 1,
        succeeded = succeeded + (NEW.state = 'succeeded')::int,
        failed = failed + (NEW.state = 'failed')::int,
        cancelled = cancelled + (NEW.state = 'cancelled')::int,
        finished_at = CASE WHEN remaining = 1
            THEN coalesce(NEW.finished_at, date_part('epoch', now())) ELSE finished_at END
    WHERE id = NEW.batch_id AND remaining > 0
    RETURNING * INTO b;
    IF FOUND AND b.remaining = 0 AND b.callback_id IS NOT NULL THEN
        -- The same text as dromos.batch.summary_json: keys in this order, no spaces.
        summary := '{"batch_id":' || to_json(b.id)::text || ',"total":' || b.total
            || ',"succeeded":' || b.succeeded || ',"failed":' || b.failed
            || ',"cancelled":' || b.cancelled || '}';
        INSERT INTO dromos_jobs (id, task, queue, state, priority, payload, created_at,
                                 callback_url)
        VALUES (b.callback_id, b.callback_task, b.callback_queue, 'queued', b.callback_priority,
                CASE WHEN b.callback_tail IS NULL THEN b.callback_head
                     ELSE b.callback_head || convert_to(summary, 'UTF8') || b.callback_tail END,
                b.finished_at, b.callback_url)
        ON CONFLICT DO NOTHING;
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.dromos_work', b.callback_queue);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER dromos_jobs_batch_count BEFORE UPDATE OF state ON dromos_jobs FOR EACH ROW
WHEN (NEW.batch_id IS NOT NULL AND NOT NEW.batch_counted
      AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
EXECUTE FUNCTION dromos_count_batch_job();
