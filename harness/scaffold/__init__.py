"""``harness new-plugin``: render the package templates (``templates/*.tmpl``, shipped as package
data) into a new folder. Placeholders are ``{{key}}`` (not ``$`` or ``{}``, which Python and TOML
use), replaced literally; nothing in a template is evaluated."""
from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

# template file -> path in the new package ({{...}} placeholders allowed in the path too)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "package_init.py.tmpl": "{{package}}/__init__.py",
    "plugin.py.tmpl": "{{package}}/plugin.py",
    "attention.py.tmpl": "{{package}}/attention.py",
    "test_attention.py.tmpl": "tests/test_{{name}}_attention.py",
    "suite.toml.tmpl": "suites/{{name}}.toml",
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(ValueError):
    """A name or folder that cannot be used; one line."""


def names_for(name: str) -> dict[str, str]:
    """What the package is called where: ``my_idea`` -> distribution ``harness-my-idea``, package
    ``harness_my_idea``, entry point ``my_idea``, mixer ``my_idea.attention`` (the repository's
    plugins follow the same pattern)."""
    name = name.replace("-", "_")
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(f"plugin name {name!r}: use lower-case letters, digits and _ (or -), starting "
                            f"with a letter, e.g. my_idea")
    if name == "harness" or name.startswith("harness_"):
        raise ScaffoldError(f"plugin name {name!r}: name the idea, not the harness (the package is "
                            f"harness_<name> already)")
    return {"name": name, "dist": f"harness-{name.replace('_', '-')}", "package": f"harness_{name}",
            "mixer": f"{name}.attention", "class_name": "".join(p.capitalize() for p in name.split("_")) + "Attention"}


def render(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.search(r"\{\{\w+\}\}", text)
    if left:  # a template bug, not a user error
        raise RuntimeError(f"unfilled placeholder {left.group(0)}")
    return text


def write_plugin(name: str, directory: str | Path = ".") -> tuple[Path, dict[str, str]]:
    """Create ``directory/name`` with the package; refuses a folder that exists and is not empty,
    and a name another installed plugin already uses."""
    names = names_for(name)
    folder = Path(directory) / names["name"]
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScaffoldError(f"{folder} exists and is not empty; pick another --dir or name")
    taken = _installed_entry_points()
    if names["name"] in taken:
        raise ScaffoldError(f"plugin name {names['name']!r} is already used by the installed distribution "
                            f"{taken[names['name']]}; pick another name")
    templates = resources.files("harness.scaffold") / "templates"
    for template, target in FILES.items():
        path = folder / render(target, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render((templates / template).read_text(encoding="utf-8"), names), encoding="utf-8")
    return folder, names


def _installed_entry_points() -> dict[str, str]:
    from importlib import metadata

    from harness.plugins import ENTRY_POINT_GROUP

    return {ep.name: (ep.dist.name if ep.dist else "?") for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
