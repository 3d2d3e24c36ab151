"""The training worker: real fits in a separate process, progress, search, errors and cancellation."""
import asyncio
import os
import pickle
import signal
import time

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from pgml_server.ml.training import TrainingError
from pgml_server.ml.training.worker import TrainingJob, run_job, train_in_subprocess


def _train(job, **kw):
    messages = []
    result = asyncio.run(train_in_subprocess(job, messages.append, **kw))
    return result, messages


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_real_fit_in_a_worker_process():
    X, y = load_diabetes(return_X_y=True)
    started = []
    result, messages = _train(TrainingJob("regression", "ridge", {"alpha": 0.5}, X, y), on_start=started.append)
    assert messages[0] == "fitting ridge on 331 rows × 10 features" and messages[1] == "scoring on 111 test rows"
    assert started and started[0] != os.getpid()
    assert result.num_features == 10 and result.hyperparams == {"alpha": 0.5} and result.classes is None
    assert 0.3 < result.metrics["r2"] < 0.7 and result.metrics["fit_time"] == result.fit_time > 0
    model = pickle.loads(result.estimator_bytes)
    assert model.alpha == 0.5 and model.predict(X[:3]).shape == (3,)


def test_same_job_same_model():
    X, y = load_diabetes(return_X_y=True)
    job = TrainingJob("regression", "random_forest", {"n_estimators": 5}, X, y, seed=3)
    first, second = run_job(job), run_job(job)
    assert first.metrics["r2"] == second.metrics["r2"]


def test_async_progress_callback_and_grid_search():
    X, y = load_iris(return_X_y=True)
    job = TrainingJob("classification", "svm", {"kernel": "rbf"}, X, y.astype(np.float64), test_sampling="stratified",
                      search="grid", search_params={"C": [0.01, 1.0, 10.0]}, search_args={"cv": 3})
    seen = []

    async def progress(message):
        await asyncio.sleep(0)
        seen.append(message)

    result = asyncio.run(train_in_subprocess(job, progress))
    assert seen[0] == "grid search for svm: 3 candidates × 3 folds on 112 rows × 4 features"
    assert seen[1].startswith("best f1 ")
    search = result.search_results
    assert search["params"] == [{"C": 0.01}, {"C": 1.0}, {"C": 10.0}] and len(search["mean_test_score"]) == 3
    assert search["best_params"]["C"] in (1.0, 10.0) and result.metrics["search_results"] == search
    assert result.hyperparams == {"kernel": "rbf", "C": search["best_params"]["C"]}
    assert result.classes == [0.0, 1.0, 2.0] and result.metrics["f1"] > 0.8


def test_binary_classifier_gets_probability_metrics():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + rng.normal(scale=0.5, size=300) > 0).astype(np.float64)
    result = run_job(TrainingJob("classification", "linear", {}, X, y))
    assert {"f1", "precision", "recall", "accuracy", "mcc", "roc_auc", "log_loss"} <= set(result.metrics)


def test_joint_regression_with_random_search_on_a_wrapped_estimator():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    Y = np.column_stack([X @ [1.0, 2.0, 0.0], X @ [0.0, -1.0, 3.0]])
    result = run_job(TrainingJob("regression", "linear_svm", {"max_iter": 5000}, X, Y, search="random",
                                 search_params={"C": [0.1, 1.0, 10.0]}, search_args={"n_iter": 2, "cv": 3}))
    model = pickle.loads(result.estimator_bytes)
    assert type(model).__name__ == "MultiOutputRegressor" and model.predict(X[:2]).shape == (2, 2)
    assert set(result.hyperparams) == {"max_iter", "C"} and len(result.search_results["params"]) == 2
    assert result.metrics["r2"] > 0.9


def test_stratified_fallback_warning_is_a_progress_line():
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.array([0.0] * 10 + [1.0] * 9 + [2.0])
    messages = []
    run_job(TrainingJob("classification", "ridge", {}, X, y, test_sampling="stratified"), messages.append)
    assert "class 2.0 has 1" in messages[0]


def test_estimator_errors_come_back_as_training_errors():
    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(TrainingError) as err:
        _train(TrainingJob("classification", "linear", {}, X, np.zeros(40)))  # one class only
    assert err.value.sqlstate == "22023" and "class" in err.value.message and "ValueError" in err.value.detail
    with pytest.raises(TrainingError) as err:
        _train(TrainingJob("regression", "linear", {}, X, X[:, 0], search="grid", search_params={"nope": [1]}))
    assert err.value.sqlstate == "22023" and "'nope'" in err.value.message


def test_a_killed_worker_is_an_error_not_a_hang():
    X = np.random.default_rng(0).normal(size=(3000, 5))
    job = TrainingJob("regression", "gaussian_process", {"n_restarts_optimizer": 50}, X, X[:, 0])

    async def main():
        task = asyncio.ensure_future(train_in_subprocess(job, lambda m: os.kill(pids[0], signal.SIGKILL),
                                                         on_start=pids.append))
        return await asyncio.wait_for(task, 30)

    pids = []
    with pytest.raises(TrainingError) as err:
        asyncio.run(main())
    assert err.value.sqlstate == "XX000" and "exit code -9" in err.value.message


def test_cancellation_terminates_the_worker_promptly():
    X = np.random.default_rng(0).normal(size=(3000, 5))
    job = TrainingJob("regression", "gaussian_process", {"n_restarts_optimizer": 50}, X, X[:, 0])
    pids, fitting = [], []

    async def main():
        task = asyncio.ensure_future(train_in_subprocess(job, fitting.append, on_start=pids.append))
        while not fitting:                      # the worker is inside fit() now
            await asyncio.sleep(0.01)
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not _pid_gone(pids[0]) and time.monotonic() - cancelled_at < 5:
            await asyncio.sleep(0.02)
        return time.monotonic() - cancelled_at

    elapsed = asyncio.run(main())
    assert _pid_gone(pids[0]) and elapsed < 1.5


def test_the_fork_server_preloads_modules_that_exist():
    """multiprocessing's fork server skips a preload module that does not import, silently: a stale
    name (the worker moved to ml/training/) would cost every first training the imports again."""
    import importlib

    from pgml_server.ml.training import worker
    for name in worker._PRELOAD:
        importlib.import_module(name)
