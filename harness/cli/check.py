"""``harness check MIXER``: the mixer contract, one line per property, with how close to the line it is."""
from __future__ import annotations

import math
import sys

import click


def _options(items: tuple[str, ...]) -> dict[str, object]:
    from harness.suite import parse_literal

    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        options[key.strip()] = parse_literal(value.strip())
    return options


def _measured(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3e}" if value and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:g}"


@click.command("check")
@click.argument("mixer")
@click.option("--option", "option_items", multiple=True, metavar="KEY=VALUE",
              help="Mixer option, e.g. --option views=5 (repeatable; values are TOML/JSON literals).")
@click.option("--dim", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--max-len", default=16, show_default=True, type=click.IntRange(min=2),
              help="The one length of a fixed_len mixer (others are checked at 12, 16 and 40 tokens).")
def check_command(mixer: str, option_items: tuple[str, ...], dim: int, heads: int, max_len: int) -> None:
    """Check MIXER against the mixer contract (what harness.testing.check_mixer asserts) and print
    each property's measured figure, its threshold and the verdict. Exit status 1 if any fails."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.registry import UnknownNameError
    from harness.testing import contract_report

    options = _options(option_items)
    try:
        report = contract_report(mixer, dim=dim, heads=heads, max_len=max_len, **options)
    except (UnknownNameError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
    table = Table(title=f"{mixer}" + (f" ({shown})" if shown else "") + ": mixer contract", title_justify="left")
    for column in ("property", "measured", "threshold", "result", "detail"):
        table.add_column(column, justify="right" if column == "measured" else "left", no_wrap=column != "detail")
    for r in report.results:
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        table.add_row(r.name, _measured(r.measured), r.threshold, verdict, escape(r.detail))
    Console(width=max(Console().width, 120)).print(table)
    if report.failures:
        click.echo(f"{len(report.failures)} of {len(report.results)} properties fail: "
                   + ", ".join(r.title for r in report.failures), err=True)
        sys.exit(1)
    click.echo(f"all {len(report.results)} properties pass")
