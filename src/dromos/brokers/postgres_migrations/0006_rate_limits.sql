-- Version 6: rate limits (dromos.rate). One sliding-window log per key: the starts handed
-- out, each kept until its window ends; dromos_throttle reserves the next start under an
-- advisory lock per key (concurrent reservers of one key queue up, others do not wait) and
-- returns the seconds until it, timed by the database's clock after the lock was taken; a
-- start more than hold seconds away is reported without being reserved.
CREATE TABLE dromos_rate_starts (
    key   text             NOT NULL,
    at    double precision NOT NULL,  -- when the start is (a reservation may lie ahead)
    until double precision NOT NULL   -- at + the limit's period: then it counts no more
);
CREATE INDEX dromos_rate_starts_key ON dromos_rate_starts (key, at);
CREATE INDEX dromos_rate_starts_until ON dromos_rate_starts (until);

CREATE FUNCTION dromos_throttle(rate_key text, lim integer, period double precision,
                                hold double precision DEFAULT NULL)
RETURNS double precision LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    now_s double precision;
    last double precision;
    nth double precision;
    at_s double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('dromos:rate:' || rate_key, 0));
    now_s := date_part('epoch', clock_timestamp());
    DELETE FROM dromos_rate_starts WHERE key = rate_key AND until <= now_s;
    SELECT max(at) INTO last FROM dromos_rate_starts WHERE key = rate_key;
    SELECT at INTO nth FROM dromos_rate_starts WHERE key = rate_key
        ORDER BY at DESC LIMIT 1 OFFSET lim - 1;
    -- dromos.rate.next_start: fewer than lim starts, now; else after the newest, and one
    -- period after the lim-th newest.
    at_s := CASE WHEN nth IS NULL THEN now_s ELSE greatest(now_s, last, nth + period) END;
    IF hold IS NOT NULL AND at_s - now_s > hold THEN
        RETURN at_s - now_s;  -- too far off: reported, not reserved
    END IF;
    INSERT INTO dromos_rate_starts (key, at, until) VALUES (rate_key, at_s, at_s + period);
    RETURN at_s - now_s;
END $$;
