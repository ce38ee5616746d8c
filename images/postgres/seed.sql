-- The seed every pristine-db test starts from (images/postgres/build.sh
-- loads it into the image's second layer). duet-bench's pristine module
-- knows the same numbers (bench/src/pristine.rs, `Seed`): change both.
--
-- Database `seed` is the template the shared strategy resets from; `app`
-- is a copy of it and the one every test connects to.
\set ON_ERROR_STOP on
CREATE DATABASE seed;
\connect seed
CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    owner   text    NOT NULL,
    balance bigint  NOT NULL
);
INSERT INTO accounts
    SELECT i, 'owner-' || i, (i::bigint * 7919) % 100003
    FROM generate_series(1, 100000) AS i;
CREATE TABLE orders (
    id      integer PRIMARY KEY,
    account integer NOT NULL REFERENCES accounts,
    amount  bigint  NOT NULL
);
INSERT INTO orders
    SELECT i, (i % 100000) + 1, i % 977
    FROM generate_series(1, 20000) AS i;
-- What the tests write; empty in the seed.
CREATE TABLE test_writes (
    test text    NOT NULL,
    n    integer NOT NULL
);
VACUUM ANALYZE;
\connect postgres
ALTER DATABASE seed WITH IS_TEMPLATE true ALLOW_CONNECTIONS false;
CREATE DATABASE app TEMPLATE seed;
CHECKPOINT;
