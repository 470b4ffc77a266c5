"""The ``harness`` command line. Heavy modules (torch, mlflow, optuna) are imported inside commands."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click

from harness import __version__

KINDS = ("mixers", "models", "tasks", "metrics", "components", "plugins")
HEADERS = {"causal_ok": "causal", "padding_ok": "padding", "needs_grid": "grid", "fixed_len": "fixed T",
           "kv_cache": "kv cache", "higher_is_better": "higher better", "needs_padding": "pads"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harness")
def cli() -> None:
    """Fair, reproducible, parameter-matched comparisons of attention mixers."""


def _rows(kind: str) -> list[dict[str, Any]]:
    from harness import plugins, registry

    regs = registry.get_registries()  # first, so that registration errors show up as plugin errors
    if kind == "plugins":
        return [asdict(info) for info in plugins.plugin_infos()]
    rows = []
    for spec in getattr(regs, kind):
        row = {"name": spec.name, "plugin": spec.plugin, "version": spec.plugin_version,
               "description": spec.description}
        if kind == "mixers":
            row.update(spec.capabilities())
            row["defaults"] = dict(spec.defaults)
        elif kind == "models":
            row["inputs"] = list(spec.inputs)
        elif kind == "tasks":
            row.update(causal=spec.causal, needs_padding=spec.needs_padding, metrics=list(spec.metrics))
        elif kind == "metrics":
            row["higher_is_better"] = spec.higher_is_better
        elif kind == "components":
            row["kind"] = spec.kind
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS), default="mixers", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str, as_json: bool) -> None:
    """List registered mixers, models, tasks, metrics, components or plugins."""
    from harness.registry import DuplicateNameError

    try:
        rows = _rows(kind)
    except DuplicateNameError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"harness {kind}")
    hidden = ("description", "default", "module", "defaults")  # in --json; too wide for a table
    columns = [c for c in (rows[0] if rows else {"name": ""}) if c not in hidden]
    for col in columns:
        table.add_column(HEADERS.get(col, col), no_wrap=col in ("name", "plugin"))
    for row in rows:
        style = "red" if row.get("error") else None
        table.add_row(*(_cell(row.get(c)) for c in columns), style=style)
    Console(width=max(Console().width, 120)).print(table)
    if kind == "plugins" and any(r.get("error") for r in rows):
        click.echo("Broken plugins are skipped; everything else works. HARNESS_STRICT_PLUGINS=1 shows tracebacks.")


def _suite_or_exit(path: str, overrides: tuple[str, ...]) -> Any:
    from harness.suite import SuiteError, load_suite

    try:
        return load_suite(path, list(overrides))
    except SuiteError as exc:
        _problems(path, exc.problems)


def _problems(path: str, problems: list[str]) -> None:
    for line in problems:
        click.echo(f"{path}: {line}", err=True)
    click.echo(f"{len(problems)} problem(s); nothing was run.", err=True)
    sys.exit(1)


SET_HELP = "Override a suite key, e.g. --set train.steps=100 (repeatable)."


@cli.command("validate")
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def validate_command(suite_path: str, overrides: tuple[str, ...]) -> None:
    """Check a suite without running it: keys, names, capabilities, data and budgets."""
    from harness.suite import SuiteError
    from harness.validate import check_suite

    suite = _suite_or_exit(suite_path, overrides)
    try:
        plans = check_suite(suite)
    except SuiteError as exc:
        _problems(suite_path, exc.problems)
    n = len(suite.variants) * len(suite.suite.seeds)
    click.echo(f"{suite_path}: OK, {len(suite.variants)} variants x {len(suite.suite.seeds)} seeds = {n} runs")
    for plan in plans.values():
        if plan.target is not None:
            click.echo(f"  {plan.variant}: {plan.knob} = {plan.model_config[plan.knob]:.4g}, {plan.count} "
                       f"{plan.achieved:,} (target {plan.target:,}, gap {plan.gap:+.2%})")


@cli.command("run")
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("-v", "--variant", "variants", multiple=True, help="Run only these variants (repeatable).")
@click.option("--no-track", is_flag=True, help="Do not record the runs in MLflow.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
              "sqlite:///mlruns/mlflow.db).")
@click.option("--out", "output_dir", default=None, help="Output folder (default: results/<suite name>).")
@click.option("--best", is_flag=True, help="Give each variant its best tuned params (study <suite>.<variant> "
              "from `harness tune`) and run it over all seeds.")
@click.option("--storage", default=None, help="Optuna storage for --best (default: sqlite:///mlruns/optuna.db).")
@click.option("--profile", is_flag=True, help="Profile every run (as [profile] enabled = true): torch.profiler "
              "trace and operator table, FLOPs per step and MFU.")
def run_command(suite_path: str, overrides: tuple[str, ...], variants: tuple[str, ...], no_track: bool,
                tracking_uri: str | None, output_dir: str | None, best: bool, storage: str | None,
                profile: bool) -> None:
    """Run a suite: every variant x seed, parameter-matched, tracked, summarised."""
    from harness import tracking
    from harness.suite import SuiteError

    extra = (f"suite.output_dir={json.dumps(output_dir)}",) if output_dir else ()
    extra += ("profile.enabled=true",) if profile else ()
    if storage and not best:
        raise click.UsageError("--storage goes with --best")
    if best:
        from harness.tune import TuneError, best_overrides

        base = _suite_or_exit(suite_path, overrides + extra)
        try:
            tuned = tuple(best_overrides(base, storage, list(variants) or None, suite_path=suite_path))
        except TuneError as exc:
            _problems(suite_path, str(exc).splitlines())
        click.echo("best params: " + (" ".join(tuned) or "none (the studies tuned no keys)"))
        overrides = tuned + overrides  # an explicit --set still wins
    suite = _suite_or_exit(suite_path, overrides + extra)
    tracking.configure(enabled=not no_track, tracking_uri=tracking_uri)
    from harness.profiling import keep_freed_memory
    from harness.runner import run_suite

    keep_freed_memory()

    try:
        results = run_suite(suite, variants=list(variants) or None)
    except SuiteError as exc:
        _problems(suite_path, exc.problems)
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the current run is marked killed; finished runs are kept in "
                   f"{suite.output_dir}/runs.jsonl and a re-run resumes after them.", err=True)
        sys.exit(130)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        click.echo(f"{len(failed)} run(s) failed; see the table above and runs.jsonl.", err=True)


def _add_core_commands() -> None:
    # Their modules import only click at the top; torch, pandas and mlflow load inside the commands.
    from harness.bench import bench_command
    from harness.report import report_command

    cli.add_command(bench_command, "bench")
    cli.add_command(report_command, "report")


_add_core_commands()


@cli.command("tune")
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("-v", "--variant", "variants", multiple=True, help="Tune only these variants (repeatable).")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Trials per study, shared by all workers (default: [tune] trials).")
@click.option("--storage", default=None, help="Optuna storage: a database URL (default sqlite:///mlruns/optuna.db, "
              "postgresql://...) or a journal file ending in .log/.journal; workers on one storage share a study.")
@click.option("--study", "study_name", default=None, help="Study name (default: <suite>.<variant>; one variant).")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Worker processes on this machine.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--no-track", is_flag=True, help="Do not record the trials in MLflow.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
              "sqlite:///mlruns/mlflow.db).")
@click.option("--worker-index", type=int, default=None, hidden=True)
@click.option("--parent-run-id", default=None, hidden=True)
def tune_command(suite_path: str, variants: tuple[str, ...], trials: int | None, storage: str | None,
                 study_name: str | None, workers: int, overrides: tuple[str, ...], no_track: bool,
                 tracking_uri: str | None, worker_index: int | None, parent_run_id: str | None) -> None:
    """Tune each variant with Optuna: one study per variant, the same trial budget for all."""
    from harness.suite import SuiteError
    from harness.tune import TuneError, tune

    suite = _suite_or_exit(suite_path, overrides)
    from harness.profiling import keep_freed_memory

    keep_freed_memory()
    try:
        tune(suite, suite_path=suite_path, overrides=list(overrides), variants=list(variants) or None,
             trials=trials, storage=storage, study=study_name, workers=workers, track=not no_track,
             tracking_uri=tracking_uri, worker_index=worker_index, parent_run_id=parent_run_id, echo=click.echo)
    except SuiteError as exc:
        _problems(suite_path, exc.problems)
    except TuneError as exc:
        _problems(suite_path, str(exc).splitlines())
    except KeyboardInterrupt:
        if worker_index is None:
            click.echo("Interrupted: the running trial is recorded failed; queued trials stay in the study and "
                       "the same command resumes them.", err=True)
        sys.exit(130)


def _register_plugin_commands() -> None:
    from harness import plugins

    try:
        plugins.get_plugin_manager().hook.register_commands(cli=cli)
    except Exception as exc:  # a plugin's command must not break the CLI
        if plugins._strict():
            raise
        click.echo(f"harness: a plugin failed to add its commands: {type(exc).__name__}: {exc}", err=True)


def main(argv: list[str] | None = None) -> None:
    _register_plugin_commands()
    cli.main(args=argv, prog_name="harness")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
