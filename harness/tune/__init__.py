"""Optuna tuning: one study per (suite, variant), the same trial budget for every variant.

``harness tune SUITE [-v VARIANT ...] [--trials N] [--storage URL] [--study NAME] [--workers K]``

Each chosen variant is checked first (its search space, every tuned key against the variant), then
tuned in turn: its study ``<suite>.<variant>`` holds a queue of N trials that this process and its
workers (and any other process on the same storage) claim until none is left. A trial trains the
variant with the sampled values on the first seed for ``[tune].steps`` and is scored on the
validation metric, never on test. A study's budget only grows: ``--trials N`` is its total over every
run of the command. The best trial per study goes to ``results/<suite>/best_params.<study>.json``
(keyed by storage inside), and ``harness run SUITE --best`` re-runs every variant with its best
trial's params, read from the studies in the storage, over all seeds (``best_values``).

- ``space``: the search-space format and where a variant's space comes from.
- ``trial_suite``: the tuned metric and the suite one trial trains; the pre-flight space check.
- ``storage``: Optuna storage URLs (RDB or journal file).
- ``study``: creating or joining a study, its budget queue, sampler and pruner; claiming a trial.
- ``trials``: running one trial (objective, pruning, outcome) and the worker loop.
- ``workers``: spawning and stopping ``--workers`` processes, signal handling.
- ``mlflow_runs``: the tune-parent and per-trial MLflow runs.
- ``best``: the best_params.<study>.json files and the values for ``run --best``.
- ``session``: ``tune()``, one invocation over the chosen variants, and its summary table.
"""
from harness.tune.best import best_values, write_best
from harness.tune.errors import TuneError
from harness.tune.session import tune
from harness.tune.space import Param, parse_space, space_for
from harness.tune.storage import DEFAULT_STORAGE, display_url, is_journal, open_storage
from harness.tune.study import claim_trial, create_or_join, study_name, summarize
from harness.tune.trial_suite import check_space, trial_config, trial_suite, tuned_metric, variant_data

__all__ = ["tune", "best_values", "write_best", "TuneError", "Param", "parse_space", "space_for", "DEFAULT_STORAGE",
           "display_url", "is_journal", "open_storage", "claim_trial", "create_or_join", "study_name", "summarize",
           "check_space", "trial_config", "trial_suite", "tuned_metric", "variant_data"]
