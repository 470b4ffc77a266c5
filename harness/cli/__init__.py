"""The ``harness`` command line.

Every command, the core's included, is added through the ``register_commands`` hook (the core's
come from the default plugin ``harness.default_plugins.commands``), on first use of the group, so
importing this module is cheap. One module per command in this package; each imports only click
at its top and loads torch, mlflow, optuna and pandas inside the command.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from harness import __version__


class _PluginCommands(click.Group):
    """A group whose commands come from the plugins, loaded the first time they are listed or looked up."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from harness import plugins

        for impl in plugins.get_plugin_manager().hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=self)
            except Exception as exc:  # one plugin's command must not break the CLI
                if plugins.strict():
                    raise
                click.echo(f"harness: plugin {impl.plugin_name!r} failed to add its commands: "
                           f"{type(exc).__name__}: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Any:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_PluginCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harness")
def cli() -> None:
    """Fair, reproducible, parameter-matched comparisons of attention mixers."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="harness")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
