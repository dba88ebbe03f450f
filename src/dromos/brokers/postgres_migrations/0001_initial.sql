-- dromos on PostgreSQL, version 1: jobs, the webhook outbox and the event bus.
--
-- Applied by postgres.py inside one transaction, under a transaction-level advisory lock,
-- with search_path set to the broker's schema (so the names below are unqualified), and
-- recorded in dromos_schema_version. Never edit a migration that has shipped: add the next
-- numbered file instead.
--
-- Times are Unix seconds (double precision) read from the DATABASE clock
-- (extract(epoch FROM now())), so every worker shares one clock whatever its own says.
--
-- dromos_jobs     one row per job, from enqueue until its retention ends
--   seq             enqueue order (ties of priority run in this order)
--   id              the job id (UUIDv7 text), unique
--   state           scheduled | queued | running | retrying | succeeded | failed | cancelled
--   eta             when a scheduled/retrying job becomes ready
--   payload         the envelope bytes exactly as enqueued (JSON)
--   attempt         runs handed out so far; the fencing token of the current run
--   failures        failed runs since enqueue or the last replay (the retry budget used)
--   recoveries      runs lost with their worker (lease expired) since enqueue or replay
--   lease_until     when the current holder's lease ends (state = running)
--   errors          JSON array of every failed run's error, oldest first
--   expires_at      when an ended job may be deleted (result / dead-letter retention)
--   idempotency_*   the caller's key (unique within the queue) and until when it names this job
--   callback_url    where the completion webhook goes (NULL: none)
--   webhooks        JSON array of its delivery attempts
--   hook_due        the webhook outbox: when its delivery is due next (set by the UPDATE that
--                   ends the job; NULL once delivered or given up)
--
-- Indexes are partial so that each hot query touches only the rows it can want:
--   ready (claim), due (promote delayed), lease (recover lost runs), expiry (purge), hooks.
CREATE TABLE dromos_jobs (
    seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                text             NOT NULL UNIQUE,
    task              text             NOT NULL,
    queue             text             NOT NULL,
    state             text             NOT NULL CHECK (state IN ('scheduled', 'queued',
                          'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    priority          integer          NOT NULL DEFAULT 0,
    eta               double precision,
    payload           bytea            NOT NULL,
    attempt           integer          NOT NULL DEFAULT 0,
    failures          integer          NOT NULL DEFAULT 0,
    recoveries        integer          NOT NULL DEFAULT 0,
    lease_until       double precision,
    worker            text,
    progress          double precision NOT NULL DEFAULT 0,
    message           text,
    result            bytea,
    errors            jsonb,
    created_at        double precision NOT NULL,
    started_at        double precision,
    finished_at       double precision,
    expires_at        double precision,
    cancel_requested  boolean          NOT NULL DEFAULT false,
    idempotency_key   text,
    idempotency_until double precision,
    callback_url      text,
    webhooks          jsonb,
    hook_due          double precision
);
CREATE INDEX dromos_jobs_ready ON dromos_jobs (queue, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX dromos_jobs_due ON dromos_jobs (eta) WHERE state IN ('scheduled', 'retrying');
CREATE INDEX dromos_jobs_lease ON dromos_jobs (lease_until) WHERE state = 'running';
CREATE INDEX dromos_jobs_expiry ON dromos_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX dromos_jobs_hooks ON dromos_jobs (hook_due) WHERE hook_due IS NOT NULL;
CREATE UNIQUE INDEX dromos_jobs_queue_idempotency
    ON dromos_jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The event bus: one log; per consumer group a position and the claims of its events in
-- flight (running under a lease, retrying at a time, or dead). See postgres_events.py.
-- Publishers take an advisory lock until they commit, so that seq order is commit order
-- and a group's position never passes an event that is not visible yet.
CREATE TABLE dromos_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           text             NOT NULL,
    topic        text             NOT NULL,
    payload      bytea            NOT NULL,
    published_at double precision NOT NULL
);
CREATE INDEX dromos_events_time ON dromos_events (published_at);
CREATE TABLE dromos_event_groups (
    name       text             PRIMARY KEY,
    patterns   jsonb            NOT NULL,
    position   bigint           NOT NULL,
    created_at double precision NOT NULL
);
CREATE TABLE dromos_event_claims (
    grp        text             NOT NULL,
    seq        bigint           NOT NULL,
    state      text             NOT NULL CHECK (state IN ('running', 'retrying', 'dead')),
    attempt    integer          NOT NULL,
    due        double precision NOT NULL,
    recoveries integer          NOT NULL DEFAULT 0,
    errors     jsonb,
    failed_at  double precision,
    PRIMARY KEY (grp, seq)
);
CREATE INDEX dromos_event_claims_due ON dromos_event_claims (grp, state, due);
