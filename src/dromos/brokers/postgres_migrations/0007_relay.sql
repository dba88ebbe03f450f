-- Version 7: relay mode (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3). A
-- ready job's sent_until says until when it counts as published (NULL: not sent; 1e308:
-- published). A claim clears it, so a job queued again later (a release, a replay, a retry, a
-- recovered lease: each was claimed first) is unsent for the relay; dependents and batch
-- callbacks are inserted unsent. The relay's partial index is created by a broker opened in
-- relay mode (postgres.py), so that other schemas maintain no index they do not use.
ALTER TABLE dromos_jobs ADD COLUMN sent_until double precision;
