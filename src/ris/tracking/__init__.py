"""MLflow tracking: one run per evaluated cell and protocol, with its params, tags and metrics."""

from ris.tracking.mlflow_log import flatten, git_commit, log_run

__all__ = ["flatten", "git_commit", "log_run"]
