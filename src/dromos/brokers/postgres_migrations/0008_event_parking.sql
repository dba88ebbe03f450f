-- Version 8: event parking (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3 and
-- §9; see postgres_parking.py). RabbitMQ carries the events; what a group's consumer acked
-- off its queue to retry later or dead-letter is kept here, and the relay republishes the
-- retries when due (FOR UPDATE SKIP LOCKED: relays in many workers never wait for each other).
--
-- dromos_amqp_names   what the broker registered, per kind: a group with its patterns (a JSON
--                     array), the queues and exchanges it declared ('[]')
-- dromos_amqp_parked  per (group, key): the event (topic, payload), deliveries so far
--                     (attempt), every error (a JSON array of JobError); due set = retrying,
--                     due NULL = dead since failed_at
CREATE TABLE dromos_amqp_names (
    kind     text  NOT NULL,
    name     text  NOT NULL,
    patterns jsonb NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE dromos_amqp_parked (
    grp       text             NOT NULL,
    key       text             NOT NULL,
    topic     text             NOT NULL,
    payload   bytea            NOT NULL,
    attempt   integer          NOT NULL,
    errors    jsonb            NOT NULL,
    due       double precision,
    failed_at double precision,
    PRIMARY KEY (grp, key)
);
CREATE INDEX dromos_amqp_parked_due ON dromos_amqp_parked (due) WHERE due IS NOT NULL;
