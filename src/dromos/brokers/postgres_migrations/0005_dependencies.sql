-- Version 5: job dependencies (the "depends_on" header: ids joined by commas).
--
-- A dependent waits in state 'scheduled' without an eta (no claim readies it), its message
-- saying how many dependencies are left. Whatever statement first ends a job that dependents
-- wait for (a settle, a cancel, a claim dead-lettering a poison job, any later write) runs
-- the trigger below in its own transaction: 'succeeded' takes one dependency off each
-- dependent, and the update that takes the last one queues it and wakes its queue; 'failed'
-- or 'cancelled' ends each dependent the same way (same retention), and that update ends
-- jobs in turn, so the trigger fires again for their dependents (triggers are recursive in
-- PostgreSQL). Two transactions ending two dependencies of one dependent both update its
-- row: the second waits for the first and sees its count, so only one queues it.
--
-- dromos_jobs.waiting         a dependent's dependencies not ended yet (> 0 only while it
--                             waits for them)
-- dromos_jobs.has_dependents  true once a dependent waits for this job: only then does its
--                             end run the trigger (jobs without dependents pay nothing)
-- dromos_dependencies         one row per (dependency, dependent) still to resolve; the
--                             trigger deletes a dependency's rows when it ends
ALTER TABLE dromos_jobs ADD COLUMN waiting integer NOT NULL DEFAULT 0;
ALTER TABLE dromos_jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
CREATE TABLE dromos_dependencies (
    dependency text NOT NULL,
    dependent  text NOT NULL,
    PRIMARY KEY (dependency, dependent)
);

-- The error a dependent ends with: the same entry as dromos.brokers.base.dependency_error.
CREATE FUNCTION dromos_dependency_error(dependency text, ended text, attempt integer)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'type', CASE ended WHEN 'failed' THEN 'DependencyFailed' ELSE 'DependencyCancelled' END,
        'message', 'dependency ' || dependency || ' ended ' || ended, 'attempt', attempt)
$$;

CREATE FUNCTION dromos_release_dependents() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    ended_at double precision := coalesce(NEW.finished_at, date_part('epoch', now()));
    kept double precision := coalesce(NEW.expires_at - NEW.finished_at, 0);
    n bigint;
BEGIN
    IF NEW.state = 'succeeded' THEN
        WITH gone AS (
            DELETE FROM dromos_dependencies WHERE dependency = NEW.id RETURNING dependent
        ), moved AS (
            UPDATE dromos_jobs j SET waiting = j.waiting - 1,
                state = CASE WHEN j.waiting = 1 THEN 'queued' ELSE j.state END,
                message = CASE WHEN j.waiting = 1 THEN NULL
                               ELSE 'waiting for ' || (j.waiting - 1) || ' job(s)' END
            FROM gone WHERE j.id = gone.dependent AND j.state = 'scheduled' AND j.waiting > 0
            RETURNING j.queue, j.state
        )
        SELECT count(pg_notify(TG_TABLE_SCHEMA || '.dromos_work', q.queue)) INTO n
        FROM (SELECT DISTINCT queue FROM moved WHERE state = 'queued') q;
    ELSE
        WITH gone AS (
            DELETE FROM dromos_dependencies WHERE dependency = NEW.id RETURNING dependent
        ), ended AS (
            UPDATE dromos_jobs j SET state = NEW.state, waiting = 0, message = NULL,
                finished_at = ended_at, expires_at = ended_at + kept,
                hook_due = CASE WHEN j.callback_url IS NULL THEN j.hook_due ELSE ended_at END,
                errors = coalesce(j.errors, '[]')
                    || jsonb_build_array(dromos_dependency_error(NEW.id, NEW.state, j.attempt))
            FROM gone WHERE j.id = gone.dependent AND j.state = 'scheduled' AND j.waiting > 0
            RETURNING j.id
        )
        SELECT count(pg_notify(TG_TABLE_SCHEMA || '.dromos_done', ended.id)) INTO n FROM ended;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER dromos_jobs_release_dependents AFTER UPDATE OF state ON dromos_jobs
FOR EACH ROW
WHEN (NEW.has_dependents AND NEW.state IN ('succeeded', 'failed', 'cancelled')
      AND OLD.state NOT IN ('succeeded', 'failed', 'cancelled'))
EXECUTE FUNCTION dromos_release_dependents();

-- dromos_add_dependencies(job_id, deps): called in the transaction that inserted the job
-- job_id, with the ids of its dependencies. Each dependency's row is locked (FOR NO KEY
-- UPDATE, oldest first: a dependency is always older than its dependents, so this is the
-- order in which the trigger above locks rows too, and the two cannot deadlock), so that
-- none ends between this look and this transaction's commit unseen. Then the job ends at
-- once if a dependency failed or was cancelled (the first in deps' order), waits for the
-- ones not ended yet, or is left as inserted when every one succeeded. A dependency the
-- table does not have raises no_data_found (its id as DETAIL). Returns the job's state.
CREATE FUNCTION dromos_add_dependencies(job_id text, deps text[]) RETURNS text
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    dep record;
    missing text;
    cause text;
    cause_state text;
    cause_kept double precision;
    pending text[] := '{}';
    now_s double precision := date_part('epoch', now());
    found_state text;
BEGIN
    FOR dep IN
        SELECT j.id, j.state, j.expires_at - j.finished_at AS kept FROM dromos_jobs j
        WHERE j.id = ANY(deps) ORDER BY j.seq FOR NO KEY UPDATE
    LOOP
        IF dep.state IN ('failed', 'cancelled') THEN
            IF cause IS NULL
               OR array_position(deps, dep.id) < array_position(deps, cause) THEN
                cause := dep.id;
                cause_state := dep.state;
                cause_kept := coalesce(dep.kept, 0);
            END IF;
        ELSIF dep.state <> 'succeeded' THEN
            pending := pending || dep.id;
        END IF;
    END LOOP;
    SELECT d INTO missing FROM unnest(deps) AS d
    WHERE NOT EXISTS (SELECT 1 FROM dromos_jobs WHERE id = d) LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on names no job %', missing
            USING ERRCODE = 'no_data_found', DETAIL = missing;
    END IF;
    IF cause IS NOT NULL THEN
        UPDATE dromos_jobs SET state = cause_state, waiting = 0, message = NULL,
            finished_at = now_s, expires_at = now_s + cause_kept,
            hook_due = CASE WHEN callback_url IS NULL THEN hook_due ELSE now_s END,
            errors = coalesce(errors, '[]')
                || jsonb_build_array(dromos_dependency_error(cause, cause_state, attempt))
        WHERE id = job_id;
        PERFORM pg_notify(current_schema() || '.dromos_done', job_id);
    ELSIF cardinality(pending) > 0 THEN
        UPDATE dromos_jobs SET state = 'scheduled', eta = NULL, waiting = cardinality(pending),
            message = 'waiting for ' || cardinality(pending) || ' job(s)'
        WHERE id = job_id;
        INSERT INTO dromos_dependencies (dependency, dependent)
        SELECT p, job_id FROM unnest(pending) AS p ON CONFLICT DO NOTHING;
        UPDATE dromos_jobs SET has_dependents = true
        WHERE id = ANY(pending) AND NOT has_dependents;
    END IF;
    SELECT state INTO found_state FROM dromos_jobs WHERE id = job_id;
    RETURN found_state;
END
$$;

-- dromos_enqueue (version 4) learns the "depends_on" header: the same as Python's enqueue
-- (a dependency must exist; a dependent cannot also have an "eta"). The rest is unchanged.
CREATE OR REPLACE FUNCTION dromos_enqueue(
    envelope jsonb, idempotency_window double precision DEFAULT 86400
) RETURNS text LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    env jsonb := envelope;
    job_id text;
    job_queue text;
    due double precision;
    now_s double precision := date_part('epoch', now());
    key text;
    holder text;
    deps text[];
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
    -- The dependencies, in order, each once.
    SELECT array_agg(d ORDER BY n) INTO deps FROM (
        SELECT btrim(d) AS d, min(n) AS n
        FROM unnest(string_to_array(env->'headers'->>'depends_on', ',')) WITH ORDINALITY AS u(d, n)
        WHERE btrim(d) <> '' GROUP BY btrim(d)
    ) s;
    IF deps IS NOT NULL AND due IS NOT NULL THEN
        RAISE EXCEPTION 'dromos_enqueue: a job with "depends_on" cannot have an "eta"';
    END IF;
    IF deps IS NOT NULL THEN
        SELECT d INTO holder FROM unnest(deps) AS d
        WHERE NOT EXISTS (SELECT 1 FROM dromos_jobs WHERE id = d) LIMIT 1;
        IF holder IS NOT NULL THEN
            RAISE EXCEPTION 'dromos_enqueue: depends_on names no job %', holder
                USING ERRCODE = 'no_data_found', DETAIL = holder;
        END IF;
    END IF;
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
    IF deps IS NOT NULL THEN
        PERFORM dromos_add_dependencies(job_id, deps);
    END IF;
    PERFORM pg_notify(current_schema() || '.dromos_work', job_queue);
    RETURN job_id;
END
$$;
