"""``harness list [KIND] [--json]``: what the loaded plugins registered."""
from __future__ import annotations

import json
from typing import Any

import click

KINDS = ("mixers", "models", "tasks", "metrics", "components", "plugins")
COUNTED = ("mixers", "models", "tasks")  # per plugin in `harness list plugins`
HEADERS = {"causal_ok": "causal", "padding_ok": "padding", "needs_grid": "grid", "fixed_len": "fixed T",
           "kv_cache": "kv cache", "higher_is_better": "higher better", "needs_padding": "pads",
           "surrogate_gradients": "surrogate grad"}
HIDDEN = ("default", "module", "defaults", "source_info")  # in --json; too wide for a table
FITTED = ("description", "error")  # cut to the width that is left, one line per row
MIN_FITTED = 30  # a fitted column's least width: the console widens before it cuts more


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
        return _plugin_rows(plugins.plugin_infos(), regs)
    return [{"name": spec.name, "plugin": spec.plugin, "version": spec.plugin_version,
             "description": spec.description, **_kind_columns(kind, spec)} for spec in getattr(regs, kind)]


def _plugin_rows(infos: list[Any], regs: Any) -> list[dict[str, Any]]:
    """Each plugin: its version, where its code comes from (a checkout's path and commit, or an
    installed wheel) and how many mixers, models and tasks it registered."""
    from harness.manifest.sources import core_source, entry_point_dists, source_of

    dists = entry_point_dists()
    out = []
    for info in infos:
        if info.default:
            source = core_source()
        elif info.name in dists:
            source = source_of(dists[info.name][0] or None, dists[info.name][1])
        else:  # registered in-process (harness.testing.temporary_plugin, a notebook)
            source = source_of(None, "")
        row = {"name": info.name, "version": info.version, "source": source.describe()}
        row.update({k: sum(spec.plugin == info.name for spec in getattr(regs, k)) for k in COUNTED})
        out.append({**row, "error": info.error, "module": info.module, "default": info.default,
                    "source_info": source.as_dict()})
    return out


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def _table(kind: str, found: list[dict[str, Any]], width: int) -> tuple[Any, int]:
    """The rows as a rich table about ``width`` wide (wider when the whole columns need it) and that
    width: every column whole, the FITTED ones sharing what is left."""
    from rich.table import Table
    from rich.text import Text

    columns = [c for c in found[0] if c not in HIDDEN and c not in FITTED] + [c for c in FITTED if c in found[0]]
    cells = [[_cell(row.get(c)) for c in columns] for row in found]
    natural = [max(len(HEADERS.get(c, c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    fitted = [i for i, c in enumerate(columns) if c in FITTED]
    whole = 1 + sum(w + 3 for i, w in enumerate(natural) if i not in fitted)  # 3: padding and a border
    width = max(width, whole + (MIN_FITTED + 3) * len(fitted))
    share = (width - whole) // max(1, len(fitted)) - 3
    table = Table(title=f"harness {kind}")
    for i, col in enumerate(columns):
        table.add_column(HEADERS.get(col, col), no_wrap=True, overflow="ellipsis",
                         max_width=share if i in fitted else None, min_width=None if i in fitted else natural[i])
    for row, texts in zip(found, cells):  # Text: a description's "[q1,q2]" is not rich markup
        table.add_row(*map(Text, texts), style="red" if row.get("error") else None)
    return table, width


@click.command("list")
@click.argument("kind", type=click.Choice(KINDS), default="mixers", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str, as_json: bool) -> None:
    """List registered mixers, models, tasks, metrics, components or plugins (descriptions cut to
    fit; --json has them whole)."""
    from harness.registry import DuplicateNameError

    try:
        found = rows(kind)
    except DuplicateNameError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if not found:  # an empty table's title would wrap around its one narrow column
        click.echo(f"no {kind} {'loaded' if kind == 'plugins' else 'registered'}")
        return
    from rich.console import Console

    table, width = _table(kind, found, max(Console().width, 120))
    Console(width=width).print(table)
    if kind == "plugins" and any(r.get("error") for r in found):
        click.echo("Broken plugins are skipped; everything else works. HARNESS_STRICT_PLUGINS=1 shows tracebacks.")
