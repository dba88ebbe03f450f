-- Version 2: named leases (the scheduler's): one holder per name until a time (Unix seconds
-- on the database clock).
CREATE TABLE dromos_leases (
    name    text             PRIMARY KEY,
    holder  text             NOT NULL,  -- '' once dropped
    until   double precision NOT NULL,
    renewed double precision NOT NULL   -- when it was last taken or renewed (0: never)
);
