-- The demo entity's table, as spoolctl dev creates it.
CREATE TABLE IF NOT EXISTS customers (
    customer_id text PRIMARY KEY,
    name        text,
    email       text,
    balance     numeric(18,2),
    version     bigint NOT NULL,
    updated_at  timestamptz
);
