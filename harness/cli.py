"""The ``harness`` command line. Heavy modules (torch, mlflow, optuna) are imported inside commands."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click

from harness import __version__

KINDS = ("mixers", "models", "tasks", "metrics", "components", "plugins")


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
    columns = [c for c in (rows[0] if rows else {"name": ""}) if c not in ("description", "default", "module")]
    for col in columns:
        table.add_column(col, no_wrap=col in ("name", "plugin"))
    for row in rows:
        style = "red" if row.get("error") else None
        table.add_row(*(_cell(row.get(c)) for c in columns), style=style)
    Console(width=max(Console().width, 120)).print(table)
    if kind == "plugins" and any(r.get("error") for r in rows):
        click.echo("Broken plugins are skipped; everything else works. HARNESS_STRICT_PLUGINS=1 shows tracebacks.")


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
