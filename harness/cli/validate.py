"""``harness validate SUITE``: every check a run makes before training, and the matched budgets."""
from __future__ import annotations

import click

from harness.cli.common import SET_HELP, exit_with_problems, load_suite_or_exit


@click.command("validate")
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def validate_command(suite_path: str, overrides: tuple[str, ...]) -> None:
    """Check a suite without running it: keys, names, capabilities, data and budgets."""
    from harness.suite import SuiteError
    from harness.validate import describe_plan, validate_suite

    suite = load_suite_or_exit(suite_path, overrides)
    try:
        plans = validate_suite(suite)
    except SuiteError as exc:
        exit_with_problems(suite_path, exc.problems)
    n = len(suite.variants) * len(suite.suite.seeds)
    click.echo(f"{suite_path}: OK, {len(suite.variants)} variants x {len(suite.suite.seeds)} seeds = {n} runs")
    for plan in plans.values():
        line = describe_plan(plan)
        if line:
            click.echo(f"  {line}")
