"""The README's CLI reference matches `gristmill --help`, and CONTRIBUTING.md names only things
that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import typer.main

from gristmill.cli import app

REPO = Path(__file__).resolve().parents[1]


class _Flattened:
    """A command group seen as one command: the options of all its sub-commands."""

    def __init__(self, group: Any) -> None:
        self.params = [p for sub in group.commands.values() for p in sub.params]


def cli_commands() -> dict[str, Any]:
    """Commands by name, as `gristmill --help` lists them (a group's sub-commands merged)."""
    group = typer.main.get_command(app)
    return {name: _Flattened(cmd) if hasattr(cmd, "commands") else cmd
            for name, cmd in group.commands.items()}  # type: ignore[attr-defined]


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def command_sections() -> dict[str, str]:
    """README text under each `### `gristmill NAME ...`` heading, by NAME."""
    parts = re.split(r"^### `gristmill (\w+)", readme_section("CLI reference"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_readme_cli_reference_lists_every_command_and_option():
    sections = command_sections()
    for name, command in cli_commands().items():
        assert name in sections, f"README misses `gristmill {name}`"
        for param in command.params:
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                if opt.startswith("--") and opt != "--help":
                    assert re.search(rf"{re.escape(opt)}\b", sections[name]), \
                        f"README misses `gristmill {name} {opt}`"
        documented = set(re.findall(r"(--[a-z][a-z-]*)", sections[name]))
        real = {o for p in command.params
                for o in [*p.opts, *getattr(p, "secondary_opts", [])] if o.startswith("--")}
        assert documented <= real, f"README documents unknown options of {name}: " \
            f"{documented - real}"


def test_readme_cli_reference_names_only_real_commands():
    assert set(command_sections()) == set(cli_commands())


def test_readme_has_the_two_setup_commands():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    assert "make demo" in lines
    assert "make test" in lines


def test_contributing_names_exist():
    text = (REPO / "CONTRIBUTING.md").read_text()
    for dotted in sorted(set(re.findall(r"`(gristmill(?:\.\w+)+)`", text))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            break
    for path in re.findall(r"^(\S+\.(?:py|toml|md))\s", text, re.M):
        assert (REPO / path).exists() or (REPO / "src" / "gristmill" / path).exists(), path
    for folder in re.findall(r"`(src/gristmill/\w+/)`", text):
        assert (REPO / folder).is_dir(), folder


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """The Python quick start, run as written from a checkout-like directory."""
    block = re.search(r"## Quick start \(Python\)\n+```python\n(.*?)```",
                      (REPO / "README.md").read_text(), re.S)
    assert block, "README has no Python quick start"
    assert len(block.group(1).strip().splitlines()) <= 12
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(REPO / "data" / "demo")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert (tmp_path / "out" / "quick" / "corpus" / "manifest.json").is_file()
