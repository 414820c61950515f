-- Idempotency-Key records of uploads (IETF draft-ietf-httpapi-idempotency-key-header):
-- a key is claimed in_flight by the request that first uses it, then holds
-- that request's fingerprint and answer. The owner refreshes updated_at while
-- it streams, so a key whose owner died can be taken over.
CREATE TABLE spool_idempotency_keys (
    tenant      text NOT NULL,
    key         text NOT NULL,
    state       text NOT NULL,          -- in_flight | done
    fingerprint bytea,
    status      integer,
    location    text,
    body        bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
CREATE INDEX spool_idempotency_keys_created ON spool_idempotency_keys USING brin (created_at);
