"""The core's commands, added the way a plugin adds its own. Each command's module imports only
click at its top, so ``harness --help`` stays fast."""
from __future__ import annotations

from typing import Any

from harness import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from harness.cli.bench import bench_command
    from harness.cli.check import check_command
    from harness.cli.list import list_command
    from harness.cli.new_plugin import new_plugin_command
    from harness.cli.report import report_command
    from harness.cli.reproduce import reproduce_command
    from harness.cli.run import run_command
    from harness.cli.tune import tune_command
    from harness.cli.validate import validate_command

    for command in (list_command, validate_command, run_command, tune_command, bench_command, report_command,
                    check_command, reproduce_command, new_plugin_command):
        cli.add_command(command)
