"""The seed README's regression walkthrough, verbatim, through psql against pgml-server."""
from __future__ import annotations

import subprocess

import psycopg
import pytest

WALKTHROUGH = """
SELECT pgml.load_dataset('diabetes');
SELECT * from pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target');
SELECT pgml.predict('Diabetes Progression', ARRAY[0.038075905,0.05068012,0.061696205,0.021872355,-0.0442235,-0.03482076,-0.043400846,-0.002592262,0.01990842,-0.017646125]) AS progression;
SELECT pgml.predict('Diabetes Progression', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) AS progression
FROM pgml.diabetes
LIMIT 10;
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target', 'ridge');
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target', 'random_forest', '{"n_estimators": 10}');
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score');
SELECT * FROM pgml.deploy('Diabetes Progression', 'rollback');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'ridge');
SELECT name, task, algorithm FROM pgml.deployed_models;
"""


def test_walkthrough_verbatim_through_psql(server, upstream):
    psql = str(upstream.bin_dir / "psql")
    proc = subprocess.run([psql, "-X", "-v", "ON_ERROR_STOP=1", "-h", server.host, "-p", str(server.port),
                           "-U", "postgres", "-d", "postgres"], input=WALKTHROUGH, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "(pgml.diabetes,442)" in text
    assert "Diabetes Progression | regression | linear" in text
    assert "progression" in text and "(10 rows)" in text
    assert "ridge" in text and "random_forest" in text
    assert "Diabetes Progression | best_score | ridge" in text
    # psql shows training progress as NOTICEs on stderr
    assert "pgml.train" in proc.stderr


def test_predictions_over_table_match_estimator(server):
    """pgml.predict over the table equals pgml.predict with the same constant features."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('walk-equal', 'regression', 'pgml.diabetes', 'target', 'ridge')")
        rows = conn.execute("SELECT ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]::float8[], "
                            "pgml.predict('walk-equal', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) "
                            "FROM pgml.diabetes ORDER BY target LIMIT 25").fetchall()
        assert len(rows) == 25
        for features, streamed in rows:
            single = conn.execute("SELECT pgml.predict('walk-equal', %s::float8[])", (features,)).fetchone()[0]
            assert streamed == pytest.approx(single, rel=1e-6)
