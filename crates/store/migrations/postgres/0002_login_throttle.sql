-- Failed sign-in counters, shared by every replica: one row per throttle key, the sha256 hex of `account:<email>`
-- or `address:<ip>` (so an attacker's invented emails take bounded space). `failures` counts attempts that reached
-- the password check without signing in; `noted_at` is the `last_failure_at` a `login_throttled` audit row was
-- written for (one per back-off period). Rows older than the reset window are deleted as new attempts arrive.
CREATE TABLE login_throttle (
    key             TEXT PRIMARY KEY,
    failures        BIGINT NOT NULL CHECK (failures >= 0),
    last_failure_at BIGINT NOT NULL,
    noted_at        BIGINT
);
CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_at);
