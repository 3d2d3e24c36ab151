-- Classification walkthrough: psql -f examples/classification/run.sql -h 127.0.0.1 -p 5433 -U postgres
\set ON_ERROR_STOP 1
\timing on

SELECT * FROM pgml.load_dataset('breast_cancer');
SELECT * FROM pgml.load_dataset('iris');

-- Binary classification (the key metric is f1); the label is a boolean
SELECT * FROM pgml.train('Breast Cancer Detection', 'classification', 'pgml.breast_cancer', 'malignant',
                         'linear', '{"max_iter": 2000}');
SELECT * FROM pgml.train('Breast Cancer Detection', algorithm => 'xgboost', hyperparams => '{"n_estimators": 30}');
SELECT * FROM pgml.train('Breast Cancer Detection', algorithm => 'random_forest');
SELECT malignant, pgml.predict('Breast Cancer Detection', ARRAY[mean_radius, mean_texture, mean_perimeter,
       mean_area, mean_smoothness, mean_compactness, mean_concavity, mean_concave_points, mean_symmetry,
       mean_fractal_dimension, radius_error, texture_error, perimeter_error, area_error, smoothness_error,
       compactness_error, concavity_error, concave_points_error, symmetry_error, fractal_dimension_error,
       worst_radius, worst_texture, worst_perimeter, worst_area, worst_smoothness, worst_compactness,
       worst_concavity, worst_concave_points, worst_symmetry, worst_fractal_dimension]) AS prediction
FROM pgml.breast_cancer LIMIT 10;

-- Multi-class, with probabilities; stratified test split
SELECT * FROM pgml.train('Iris Flowers', 'classification', 'pgml.iris', 'target', 'lightgbm',
                         '{"n_estimators": 30}', test_sampling => 'stratified');
SELECT target, pgml.predict('Iris Flowers', ARRAY[sepal_length, sepal_width, petal_length, petal_width]) AS class,
       pgml.predict_proba('Iris Flowers', ARRAY[sepal_length, sepal_width, petal_length, petal_width]) AS probabilities
FROM pgml.iris ORDER BY random() LIMIT 10;

-- Accuracy computed by the database itself
SELECT avg((pgml.predict('Iris Flowers', ARRAY[sepal_length, sepal_width, petal_length, petal_width]) = target)::int)
       AS accuracy FROM pgml.iris;
SELECT name, task, algorithm, deployed_at IS NOT NULL AS deployed FROM pgml.deployed_models ORDER BY name;
