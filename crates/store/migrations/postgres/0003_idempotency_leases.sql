-- An in-flight Idempotency-Key names the server process that runs its request and holds a lease it renews while
-- the request runs; a claim whose lease lapsed (its owner died) may be taken over.
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT;
ALTER TABLE idempotency_keys ADD COLUMN lease_expires_at BIGINT;
