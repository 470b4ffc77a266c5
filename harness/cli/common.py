"""What several commands share: loading a suite or exiting with its problems, and option help."""
from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

SET_HELP = "Override a suite key, e.g. --set train.steps=100 (repeatable)."
TRACKING_URI_HELP = "MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db]."


def print_problems(path: str, problems: list[str]) -> None:
    """Each problem after the suite's path (problems name their TOML key, never the file), then the count."""
    for line in problems:
        click.echo(f"{path}: {line}", err=True)
    click.echo(f"{len(problems)} problem(s); nothing was run.", err=True)


def exit_with_problems(path: str, problems: list[str]) -> NoReturn:
    print_problems(path, problems)
    sys.exit(1)


def load_suite_or_exit(path: str, overrides: tuple[str, ...] | list[str], values: dict[str, Any] | None = None) -> Any:
    """The typed suite, or every problem printed with the path and exit status 1."""
    from harness.suite import SuiteError, load_suite

    try:
        return load_suite(path, list(overrides), values=values)
    except SuiteError as exc:
        exit_with_problems(path, exc.problems)
