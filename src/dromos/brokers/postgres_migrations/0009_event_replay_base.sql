-- Version 9: a replayed dead letter keeps its attempt, the fencing token of its deliveries
-- (a holder from before the replay cannot settle the replayed delivery with a number that
-- comes round again); base is the attempt it had when last replayed, and a delivery's tries,
-- its retry budget used, are attempt - base.
ALTER TABLE dromos_event_claims ADD COLUMN base integer NOT NULL DEFAULT 0;
-- The same for an event the RabbitMQ broker parked in this store to retry.
ALTER TABLE dromos_amqp_parked ADD COLUMN base integer NOT NULL DEFAULT 0;
