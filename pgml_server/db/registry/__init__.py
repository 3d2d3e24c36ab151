"""The `pgml` registry in the upstream: every SQL statement against the `pgml` schema lives here.

Functions take an Executor (executor.py), so they run on a client's own session (its role and
transaction apply) or on the server's own connection alike.
"""
from .deployments import (DEPLOY_CHANNEL, KEY_METRICS, STRATEGIES, deploy, deploy_model_id,  # noqa: F401
                          deployed_model, should_auto_deploy)
from .migrations import MIGRATIONS, migrate, schema_version  # noqa: F401
from .models import (create_model, fail_model, fail_orphaned_models, fail_stale_models,  # noqa: F401
                     finish_model, get_or_create_hmac_key, json_safe, model_artifact, model_info)
from .projects import (Project, Snapshot, create_snapshot, get_or_create_project, get_project,  # noqa: F401
                       get_snapshot, last_snapshot, record_snapshot_analysis, snapshot_columns, snapshot_table)
from .monitoring import (insert_prediction_sample, model_bins, prediction_samples,  # noqa: F401
                         save_model_bins)
from .schedules import (SCHEDULE_CHANNEL, Claim, ScheduleState, claim_due_run, delete_schedule, drift_watched,  # noqa: F401
                        fail_orphaned_runs, finish_run, interval_seconds, latest_model_settings, now_epoch,
                        schedule_state, set_run_model, trigger_drift_run, upsert_schedule)
