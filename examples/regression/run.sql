-- Regression walkthrough (the seed README's): psql -f examples/regression/run.sql -h 127.0.0.1 -p 5433 -U postgres
\set ON_ERROR_STOP 1
\timing on

-- The data: a toy dataset into pgml.diabetes
SELECT * FROM pgml.load_dataset('diabetes');

-- Train with the default algorithm (linear): the snapshot, the model, and its deployment
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target');

-- Predict a new data point, and rows of a table
SELECT pgml.predict('Diabetes Progression', ARRAY[0.038075905,0.05068012,0.061696205,0.021872355,-0.0442235,
       -0.03482076,-0.043400846,-0.002592262,0.01990842,-0.017646125]) AS progression;
SELECT target, pgml.predict('Diabetes Progression', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) AS progression
FROM pgml.diabetes LIMIT 10;

-- Other algorithms: the best one by r2 is deployed automatically
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'ridge', hyperparams => '{"alpha": 0.5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'random_forest', hyperparams => '{"n_estimators": 50}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'lightgbm', hyperparams => '{"n_estimators": 50}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'ridge', search => 'grid',
                         search_params => '{"alpha": [0.1, 1.0, 10.0]}');

-- What was trained, and what is deployed
SELECT m.id, m.algorithm, round((m.metrics->>'r2')::numeric, 4) AS r2 FROM pgml.models m
JOIN pgml.projects p ON p.id = m.project_id AND p.name = 'Diabetes Progression' ORDER BY m.id;
SELECT * FROM pgml.deployed_models WHERE name = 'Diabetes Progression';

-- Predictions inside any query: WHERE, ORDER BY, aggregates
SELECT count(*) AS fast_progression FROM pgml.diabetes
WHERE pgml.predict('Diabetes Progression', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) > 200;
SELECT avg(pgml.predict('Diabetes Progression', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) - target) AS mean_error
FROM pgml.diabetes;

-- Deploy by hand: the most recent model, then roll back
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent');
SELECT * FROM pgml.deploy('Diabetes Progression', 'rollback');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score');
