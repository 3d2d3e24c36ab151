-- Run by tests/test_psql.py with `psql -X -v ON_ERROR_STOP=0 -f`, straight to the upstream and
-- through pgml-server: both outputs (stdout and stderr) must be identical.
\pset null '<null>'
CREATE TEMP TABLE people (id int PRIMARY KEY, name text, city text, score numeric(6,2), born date);
INSERT INTO people VALUES
  (1, 'Zoë', 'Zürich', 12.50, '1990-01-02'),
  (2, 'José', NULL, NULL, '1985-07-31'),
  (3, '李雷', '北京', 99.99, NULL),
  (4, 'emoji 🐘', 'Tallinn', -1.00, '2000-02-29');
SELECT * FROM people ORDER BY id;
SELECT count(*), count(city), sum(score), max(name) FROM people;
SELECT id, name IS NULL AS no_name, coalesce(city, '?') FROM people WHERE score IS NULL OR city IS NULL;
-- psql's \copy (client-side files) both ways
\copy people TO 'people.tsv'
CREATE TEMP TABLE people2 (LIKE people);
\copy people2 FROM 'people.tsv'
SELECT * FROM people2 EXCEPT SELECT * FROM people;
\copy (SELECT id, name FROM people2 ORDER BY id) TO 'names.csv' WITH (FORMAT csv, HEADER)
-- COPY FROM STDIN with inline data
COPY people2 (id, name, city) FROM STDIN;
10	ten	\N
11	eleven	Riga
\.
\copy people2 (id, name) FROM stdin
12	twelve
\.
SELECT id, name, city FROM people2 WHERE id >= 10 ORDER BY id;
COPY (SELECT id, name FROM people2 WHERE id >= 10 ORDER BY id) TO STDOUT WITH (FORMAT csv);
-- errors: each is reported and the script goes on
SELECT 1/0;
SELECT * FROM no_such_table;
INSERT INTO people VALUES (1, 'dup');
SELEC broken syntax;
COPY people2 FROM STDIN;
not-a-number	x
\.
SELECT 'still alive' AS after_errors;
-- a transaction with an error, then rollback
BEGIN;
INSERT INTO people VALUES (5, 'temporary');
SELECT count(*) FROM people;
SELECT no_such_column FROM people;
SELECT 'ignored: transaction aborted';
ROLLBACK;
SELECT count(*) AS after_rollback FROM people;
BEGIN;
UPDATE people SET score = score * 2 WHERE id = 1 RETURNING id, score;
SAVEPOINT s1;
DELETE FROM people;
ROLLBACK TO SAVEPOINT s1;
COMMIT;
SELECT id, score FROM people ORDER BY id;
-- notices and warnings from the server
DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; RAISE WARNING 'careful: % rows', (SELECT count(*) FROM people); END $$;
SET client_min_messages = warning;
DO $$ BEGIN RAISE NOTICE 'not shown'; END $$;
RESET client_min_messages;
-- several statements in one Query message
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 'x' || NULL AS c;
-- psql meta-commands that query the catalog
\d pg_catalog.pg_am
\dt pg_catalog.pg_class
\x on
SELECT * FROM people WHERE id = 3;
\x off
SELECT repeat('ab', 5000) = repeat('ab', 5000) AS long_value, length(repeat('€', 100000)) AS big;
SELECT g, g * g AS sq FROM generate_series(1, 2000) g WHERE g % 500 = 0;
