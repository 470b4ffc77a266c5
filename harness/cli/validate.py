"""``harness validate SUITE...``: every check a run makes before training, and the matched budgets;
``--keys`` lists every suite key."""
from __future__ import annotations

import sys

import click

from harness.cli.common import SET_HELP, print_problems


def _validate_one(path: str, overrides: tuple[str, ...], contract: bool) -> bool:
    """Print one suite's problems, or its OK line and matched budgets; True when it is valid."""
    from harness.validate import describe_plan, validate_file

    result = validate_file(path, overrides, contract=contract)
    if result.problems or result.suite is None:
        print_problems(path, result.problems)
        return False
    suite = result.suite
    n = len(suite.variants) * len(suite.suite.seeds)
    click.echo(f"{path}: OK, {len(suite.variants)} variants x {len(suite.suite.seeds)} seeds = {n} runs")
    for plan in result.plans.values():
        line = describe_plan(plan)
        if line:
            click.echo(f"  {line}")
    return True


@click.command("validate")
@click.argument("suite_paths", metavar="SUITE...", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP + " Applies to every SUITE.")
@click.option("--no-contract", is_flag=True, help="Skip the contract gate (the leak probes of every mixer on a causal "
              "or padded task).")
@click.option("--keys", is_flag=True, help="List every suite key with its type and default (the tables, then each "
              "registered task's, model's and mixer's keys) and exit.")
def validate_command(suite_paths: tuple[str, ...], overrides: tuple[str, ...], no_contract: bool, keys: bool) -> None:
    """Check suites without running them: keys, names, capabilities, data, budgets and the device,
    every problem in one pass. Exits 1 if any suite has a problem."""
    if keys:
        from harness.validate import format_keys

        click.echo(format_keys())
        return
    if not suite_paths:
        raise click.UsageError("Missing argument 'SUITE...' (or use --keys).")
    failed = [path for path in suite_paths if not _validate_one(path, overrides, not no_contract)]
    if len(suite_paths) > 1:
        summary = f"{len(suite_paths) - len(failed)} of {len(suite_paths)} suites valid"
        click.echo(summary + (f"; with problems: {', '.join(failed)}" if failed else ""), err=bool(failed))
    if failed:
        sys.exit(1)
