-- Relational data: normalized tables, a view with joins, text, temporal and NULL features.
-- psql -f examples/relational/run.sql -h 127.0.0.1 -p 5433 -U postgres
\set ON_ERROR_STOP 1

DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;
CREATE TYPE shop.tier AS ENUM ('free', 'pro', 'team');
CREATE TABLE shop.plans (id int PRIMARY KEY, name text NOT NULL, tier shop.tier NOT NULL, price numeric(8,2));
INSERT INTO shop.plans VALUES (1, 'starter', 'free', 0), (2, 'growth', 'pro', 29.5), (3, 'scale', 'team', 99);
CREATE TABLE shop.users (
    id int PRIMARY KEY,
    created_at timestamptz NOT NULL,
    age int,                          -- NULL when the user did not say
    location varchar(20),             -- a category, sometimes unknown
    plan_id int REFERENCES shop.plans,
    newsletter boolean
);
INSERT INTO shop.users
SELECT g, timestamptz '2023-01-01 00:00+00' + g * interval '7 hours',
       CASE WHEN g % 17 = 0 THEN NULL ELSE 18 + g % 50 END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE (ARRAY['Paris', 'Berlin', 'Lisbon', 'Oslo', 'Rome'])[1 + g % 5] END,
       1 + g % 3, CASE WHEN g % 13 = 0 THEN NULL ELSE g % 2 = 0 END
FROM generate_series(1, 2000) g;
CREATE TABLE shop.orders (user_id int REFERENCES shop.users, amount float8, ordered_at timestamptz);
INSERT INTO shop.orders
SELECT u.id, 10 + coalesce(u.age, 40) * 1.5 + p.price * 2
       + CASE u.location WHEN 'Paris' THEN 40 WHEN 'Oslo' THEN -20 ELSE 0 END + (u.id % 4) * 3,
       u.created_at + interval '3 days'
FROM shop.users u JOIN shop.plans p ON p.id = u.plan_id, generate_series(1, 1 + u.id % 3);

-- The training relation: one row per user, as an application would join it
CREATE VIEW shop.user_features AS
SELECT now() - u.created_at AS user_tenure, u.age, u.location, p.tier, p.name AS plan, u.newsletter,
       max(o.ordered_at)::date AS last_order, coalesce(sum(o.amount), 0) AS total_purchases
FROM shop.users u JOIN shop.plans p ON p.id = u.plan_id LEFT JOIN shop.orders o ON o.user_id = u.id
GROUP BY u.id, p.id;

-- The short form: the relation is the project, the label column is the second argument; the task
-- is inferred from the label's type and the preprocessing chosen per column (see the NOTICEs)
SELECT * FROM pgml.train('shop.user_features', 'total_purchases');

-- The same data with explicit preprocessing for some columns and another algorithm
SELECT * FROM pgml.train('Purchases', 'regression', 'shop.user_features', 'total_purchases', 'ridge',
                         preprocess => '{"age": {"impute": "median", "scale": "robust"},
                                         "location": {"encode": "target"},
                                         "plan": {"encode": {"ordinal": ["starter", "growth", "scale"]}}}');
SELECT * FROM pgml.train('Purchases', algorithm => 'lightgbm', hyperparams => '{"n_estimators": 60}');

-- What the snapshot looked like: types, NULLs, categories, the preprocessing chosen
SELECT c->>'name' AS column_name, c->>'kind' AS kind, c->>'nulls' AS nulls, c->'preprocess' AS preprocess
FROM pgml.snapshots s, jsonb_array_elements(s.analysis->'columns') c
WHERE s.relation_name = 'shop.user_features' ORDER BY s.id DESC, c->>'name' LIMIT 7;

-- Predictions from a row constructor: constants, NULLs and unseen categories work
SELECT pgml.predict('Purchases', (interval '200 days', 35, 'Paris', 'pro'::shop.tier, 'growth', true,
                                  date '2024-05-01')) AS expected_spend;
SELECT pgml.predict('Purchases', (NULL::interval, NULL::int, 'Atlantis', 'free'::shop.tier, NULL::text, NULL::bool,
                                  NULL::date)) AS with_nulls_and_an_unseen_city;

-- ... and from the view's own rows, in the target list and in WHERE
SELECT location, plan, round(total_purchases::numeric, 1) AS actual,
       round(pgml.predict('Purchases', (user_tenure, age, location, tier, plan, newsletter, last_order))::numeric, 1)
         AS predicted
FROM shop.user_features LIMIT 8;
SELECT count(*) AS big_spenders FROM shop.user_features
WHERE pgml.score('Purchases', (user_tenure, age, location, tier, plan, newsletter, last_order)) > 200;

-- A text label: classification; pgml.predict gives the class index, pgml.predict_label the label
CREATE VIEW shop.segments AS
SELECT user_tenure, age, location, tier, newsletter,
       CASE WHEN total_purchases > 300 THEN 'high' WHEN total_purchases > 150 THEN 'medium' ELSE 'low' END AS segment
FROM shop.user_features;
SELECT * FROM pgml.train('Segments', 'classification', 'shop.segments', 'segment', 'random_forest',
                         '{"n_estimators": 30}');
SELECT segment, pgml.predict_label('Segments', (user_tenure, age, location, tier, newsletter)) AS predicted
FROM shop.segments LIMIT 8;

-- Which columns matter (one-hot and calendar features sum back to their column), and why one
-- prediction is what it is: the contributions add up to it, from the (base) value
SELECT * FROM pgml.feature_importance('Purchases');
SELECT * FROM pgml.explain('Purchases', (interval '200 days', 35, 'Paris', 'pro'::shop.tier, 'growth', true,
                                         date '2024-05-01'));
