-- Version 4: dromos_enqueue(envelope jsonb), the enqueue of a producer that speaks only SQL
-- (psql, a trigger, a service in another language): it takes the job envelope of
-- docs/wire-format.md, fills in the columns the claim reads from it, wakes the queue's
-- workers (NOTIFY, delivered at commit) and returns the job id. It runs in the caller's
-- transaction: the job exists only if the caller commits.
--
--   SELECT "myschema".dromos_enqueue('{"task": "resize", "args": [42]}');
--
-- Defaults: "id" a new UUID, "created_at" the transaction's start (UTC), "queue"
-- "default", "priority" 0; the other fields as the wire format says. A job with an "eta" in
-- the future is scheduled. An "idempotency_key" header makes the call idempotent within the
-- queue for idempotency_window seconds (default one day, as dromos.App's): a key still in
-- its window returns the id of the job it names and adds nothing. Enqueueing an envelope
-- whose id exists already adds nothing and returns that id (a producer may retry).
-- Batches (the "batch_id" header) are not made here: use dromos' API or the gateway.
CREATE FUNCTION dromos_enqueue(envelope jsonb, idempotency_window double precision DEFAULT 86400)
RETURNS text LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    env jsonb := envelope;
    job_id text;
    job_queue text;
    due double precision;
    now_s double precision := date_part('epoch', now());
    key text;
    holder text;
BEGIN
    IF jsonb_typeof(env) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'dromos_enqueue: the envelope must be a JSON object';
    END IF;
    IF coalesce(env->>'task', '') = '' THEN
        RAISE EXCEPTION 'dromos_enqueue: the envelope needs a "task"';
    END IF;
    IF coalesce(env->>'id', '') = '' THEN
        env := env || jsonb_build_object('id', md5(random()::text || clock_timestamp()::text)::uuid::text);
    END IF;
    IF env->>'created_at' IS NULL THEN
        env := env || jsonb_build_object('created_at',
            to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    END IF;
    job_id := env->>'id';
    job_queue := coalesce(env->>'queue', 'default');
    due := date_part('epoch', (env->>'eta')::timestamptz);
    key := env->'headers'->>'idempotency_key';
    IF key IS NOT NULL THEN  -- a key past its window names no job any more
        UPDATE dromos_jobs SET idempotency_key = NULL
        WHERE queue = job_queue AND idempotency_key = key AND idempotency_until <= now_s;
    END IF;
    INSERT INTO dromos_jobs (id, task, queue, state, priority, eta, payload, created_at,
                             idempotency_key, idempotency_until, callback_url)
    VALUES (job_id, env->>'task', job_queue,
            CASE WHEN due > now_s THEN 'scheduled' ELSE 'queued' END,
            coalesce((env->>'priority')::integer, 0), due, convert_to(env::text, 'UTF8'),
            date_part('epoch', (env->>'created_at')::timestamptz), key,
            CASE WHEN key IS NULL THEN NULL ELSE now_s + idempotency_window END,
            env->'headers'->>'callback_url')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        IF key IS NOT NULL THEN
            SELECT id INTO holder FROM dromos_jobs
            WHERE queue = job_queue AND idempotency_key = key;
        END IF;
        RETURN coalesce(holder, job_id);
    END IF;
    PERFORM pg_notify(current_schema() || '.dromos_work', job_queue);
    RETURN job_id;
END
$$;
