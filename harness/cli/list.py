"""``harness list [KIND] [--json]``: what the loaded plugins registered."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

KINDS = ("mixers", "models", "tasks", "metrics", "components", "plugins")
HEADERS = {"causal_ok": "causal", "padding_ok": "padding", "needs_grid": "grid", "fixed_len": "fixed T",
           "kv_cache": "kv cache", "higher_is_better": "higher better", "needs_padding": "pads"}
HIDDEN = ("description", "default", "module", "defaults")  # in --json; too wide for a table


def _kind_columns(kind: str, spec: Any) -> dict[str, Any]:
    if kind == "mixers":
        return {**spec.capabilities(), "defaults": dict(spec.defaults)}
    if kind == "models":
        return {"inputs": list(spec.inputs)}
    if kind == "tasks":
        return {"causal": spec.causal, "needs_padding": spec.needs_padding, "metrics": list(spec.metrics)}
    if kind == "metrics":
        return {"higher_is_better": spec.higher_is_better}
    if kind == "components":
        return {"kind": spec.kind}
    return {}


def rows(kind: str) -> list[dict[str, Any]]:
    from harness import plugins, registry

    regs = registry.get_registries()  # first, so that registration errors show up as plugin errors
    if kind == "plugins":
        return [asdict(info) for info in plugins.plugin_infos()]
    return [{"name": spec.name, "plugin": spec.plugin, "version": spec.plugin_version,
             "description": spec.description, **_kind_columns(kind, spec)} for spec in getattr(regs, kind)]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


@click.command("list")
@click.argument("kind", type=click.Choice(KINDS), default="mixers", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str, as_json: bool) -> None:
    """List registered mixers, models, tasks, metrics, components or plugins."""
    from harness.registry import DuplicateNameError

    try:
        found = rows(kind)
    except DuplicateNameError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"harness {kind}")
    columns = [c for c in (found[0] if found else {"name": ""}) if c not in HIDDEN]
    for col in columns:
        table.add_column(HEADERS.get(col, col), no_wrap=col in ("name", "plugin"))
    for row in found:
        table.add_row(*(_cell(row.get(c)) for c in columns), style="red" if row.get("error") else None)
    Console(width=max(Console().width, 120)).print(table)
    if kind == "plugins" and any(r.get("error") for r in found):
        click.echo("Broken plugins are skipped; everything else works. HARNESS_STRICT_PLUGINS=1 shows tracebacks.")
