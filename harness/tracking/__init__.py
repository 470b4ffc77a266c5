"""MLflow tracking: the schema of names (``schema``), the connection and writer (``client``), and the
default plugin that records suites (``plugin``)."""
from harness.tracking.client import (RunWriter, configure, connect, enabled, git_commit, provenance, sqlite_path,
                                     tracking_uri, versions)
from harness.tracking.schema import DEFAULT_URI, flatten, metric_key

__all__ = ["RunWriter", "configure", "connect", "enabled", "git_commit", "provenance", "sqlite_path", "tracking_uri",
           "versions", "DEFAULT_URI", "flatten", "metric_key"]
