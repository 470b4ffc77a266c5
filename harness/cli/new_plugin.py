"""``harness new-plugin NAME``: write a ready plugin package to start an idea from."""
from __future__ import annotations

import click


@click.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to create the package in (as DIR/NAME).")
def new_plugin_command(name: str, directory: str) -> None:
    """Write plugin package NAME: pyproject.toml with the `harness` entry point, a light plugin.py,
    a softmax-attention mixer to edit, tests that call check_mixer, a suite comparing it with
    softmax on digits, and a README."""
    from harness.scaffold import ScaffoldError, write_plugin

    try:
        folder, names = write_plugin(name, directory)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {folder}/ (distribution {names['dist']}, package {names['package']}, "
               f"mixer {names['mixer']})")
    click.echo("next:")
    click.echo(f"  pip install -e {folder}")
    click.echo(f"  pytest {folder}")
    click.echo(f"  harness run {folder}/suites/{names['name']}.toml")
