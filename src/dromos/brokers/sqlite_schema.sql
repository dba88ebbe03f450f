-- dromos on SQLite: the whole store is one table and its partial indexes.
--
-- dromos_jobs     one row per job, from enqueue until its retention ends
--   seq             rowid: enqueue order (ties of priority run in this order)
--   id              the job id (UUIDv7 text), unique
--   state           scheduled | queued | running | retrying | succeeded | failed | cancelled
--   eta             unix time a scheduled/retrying job becomes ready
--   payload         the envelope bytes exactly as enqueued (JSON)
--   attempt         runs handed out so far; the fencing token of the current run
--   failures        failed runs since enqueue or the last replay (the retry budget used)
--   recoveries      runs lost with their worker (lease expired) since enqueue or replay
--   lease_until     unix time the current holder's lease ends (state = running)
--   errors          JSON array of every failed run's error, oldest first
--   expires_at      unix time an ended job may be deleted (result / dead-letter retention)
--   idempotency_*   the caller's key (unique within the queue) and until when it names this job
--   callback_url    where the completion webhook goes (NULL: none)
--   webhooks        JSON array of its delivery attempts
--   hook_due        the webhook outbox: when its delivery is due next (set by the UPDATE that
--                   ends the job; NULL once delivered or given up); indexed by
--                   dromos_jobs_hooks, which sqlite.py creates after adding the columns to
--                   files made before they existed
--   batch_id        the batch the job belongs to (NULL: none)
--   batch_counted   1 once its first end was counted in its batch (a replayed job's next end
--                   is not); both added, with the batch triggers, by sqlite.py's _migrate
--   waiting         a dependent's dependencies not ended yet: > 0 only while it is scheduled
--                   for them (no eta); the end of its last one queues it
--   dependents      1 once a dependent waits for this job: only then does its end look at
--                   dromos_dependencies; both added, with the dependency trigger, by _migrate
-- dromos_batches  one row per batch: its counts, and the callback job the trigger inserts
--                 when remaining reaches 0 (see sqlite.py's _BATCH_TRIGGERS)
-- dromos_dependencies  one row per (dependency, dependent) still to resolve: deleted by the
--                 trigger that ends the dependency (sqlite.py's _DEPENDENCY_TRIGGER)
-- dromos_meta     key/value: schema_version
--
-- Indexes are partial so that each hot query touches only the rows it can want:
--   ready (claim), due (promote delayed), lease (recover lost runs), expiry (purge).
CREATE TABLE IF NOT EXISTS dromos_jobs (
    seq               INTEGER PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    task              TEXT    NOT NULL,
    queue             TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    eta               REAL,
    payload           BLOB    NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    recoveries        INTEGER NOT NULL DEFAULT 0,
    lease_until       REAL,
    worker            TEXT,
    progress          REAL    NOT NULL DEFAULT 0,
    message           TEXT,
    result            BLOB,
    errors            TEXT,
    created_at        REAL    NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    expires_at        REAL,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    idempotency_until REAL,
    callback_url      TEXT,
    webhooks          TEXT,
    hook_due          REAL,
    batch_id          TEXT,
    batch_counted     INTEGER NOT NULL DEFAULT 0,
    waiting           INTEGER NOT NULL DEFAULT 0,
    dependents        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dromos_jobs_ready
    ON dromos_jobs (queue, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS dromos_jobs_due
    ON dromos_jobs (eta) WHERE state IN ('scheduled', 'retrying');
CREATE INDEX IF NOT EXISTS dromos_jobs_lease
    ON dromos_jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS dromos_jobs_expiry
    ON dromos_jobs (expires_at) WHERE expires_at IS NOT NULL;
DROP INDEX IF EXISTS dromos_jobs_idempotency;
CREATE UNIQUE INDEX IF NOT EXISTS dromos_jobs_queue_idempotency
    ON dromos_jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dromos_batches (
    id                TEXT    PRIMARY KEY,
    total             INTEGER NOT NULL,
    remaining         INTEGER NOT NULL,
    succeeded         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    cancelled         INTEGER NOT NULL DEFAULT 0,
    created_at        REAL    NOT NULL,
    finished_at       REAL,
    callback_id       TEXT,     -- the on_complete job (NULL: none), its columns as enqueued
    callback_task     TEXT,
    callback_queue    TEXT,
    callback_priority INTEGER,
    callback_payload  BLOB,     -- holds the summary placeholder
    callback_url      TEXT
);
CREATE TABLE IF NOT EXISTS dromos_dependencies (
    dependency TEXT NOT NULL,
    dependent  TEXT NOT NULL,
    PRIMARY KEY (dependency, dependent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dromos_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO dromos_meta (key, value) VALUES ('schema_version', '1');
-- The event bus: one log; per consumer group a position and the claims of its events in
-- flight (running under a lease, retrying at a time, or dead). See sqlite_events.py.
CREATE TABLE IF NOT EXISTS dromos_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_at REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS dromos_events_time ON dromos_events (published_at);
CREATE TABLE IF NOT EXISTS dromos_event_groups (
    name       TEXT PRIMARY KEY,
    patterns   TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    created_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS dromos_event_claims (
    grp        TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    due        REAL    NOT NULL,
    recoveries INTEGER NOT NULL DEFAULT 0,
    errors     TEXT,
    failed_at  REAL,
    base       INTEGER NOT NULL DEFAULT 0,  -- attempt when last replayed (tries = attempt - base)
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dromos_event_claims_due ON dromos_event_claims (grp, state, due);
-- Named leases (the scheduler's): one holder per name until a time.
CREATE TABLE IF NOT EXISTS dromos_leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,  -- '' once dropped
    until   REAL NOT NULL,
    renewed REAL NOT NULL   -- when it was last taken or renewed (kept when it runs out)
);
-- Rate limits (dromos.rate): the starts handed out per key, each kept until its window ends.
CREATE TABLE IF NOT EXISTS dromos_rate_starts (
    key   TEXT NOT NULL,
    at    REAL NOT NULL,  -- when the start is (a reservation may lie in the future)
    until REAL NOT NULL   -- at + the limit's period: after it the start counts no more
);
CREATE INDEX IF NOT EXISTS dromos_rate_starts_key ON dromos_rate_starts (key, at);
CREATE INDEX IF NOT EXISTS dromos_rate_starts_until ON dromos_rate_starts (until);
-- Event parking (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3 and §9; see
-- sqlite_parking.py). dromos_amqp_names: what the broker registered, per kind (group: the
-- group's patterns as a JSON array; queue, exchange: '[]'). dromos_amqp_parked: per group the
-- events it acked off RabbitMQ to keep here: due set = retrying (the relay republishes it
-- then), due NULL = dead (failed_at set); errors is a JSON array of JobError.
CREATE TABLE IF NOT EXISTS dromos_amqp_names (
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    patterns TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dromos_amqp_parked (
    grp       TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    attempt   INTEGER NOT NULL,
    base      INTEGER NOT NULL DEFAULT 0,  -- attempt when last replayed
    errors    TEXT    NOT NULL,
    due       REAL,
    failed_at REAL,
    PRIMARY KEY (grp, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dromos_amqp_parked_due ON dromos_amqp_parked (due)
    WHERE due IS NOT NULL;
