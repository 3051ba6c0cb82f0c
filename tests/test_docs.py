"""The docs stay true to the code: every command and config key is documented."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contract.settings import describe
from edge.cli import _parser as edge_parser
from hub.cli import _parser as hub_parser
from scripts.config_reference import SECTIONS, render
from simulator.cli import build_parser as sim_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(f"{prefix} {name}")
                out += _commands(sub, f"{prefix} {name}")
    return out


ALL_COMMANDS = (
    _commands(edge_parser(), "cairn-edge")
    + _commands(hub_parser(), "cairn-hub")
    + _commands(sim_parser(), "cairn-sim")
)


def test_there_are_commands_to_check() -> None:
    assert {"cairn-edge run", "cairn-hub token create", "cairn-sim demo"} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_is_documented(command: str) -> None:
    assert command in DOCS, f"`{command}` appears in no page of README.md or docs/"


def test_config_reference_is_generated_from_the_code() -> None:
    assert (ROOT / "docs" / "config-reference.md").read_text() == render(), (
        "docs/config-reference.md is stale: run .venv/bin/python scripts/config_reference.py"
    )


def test_every_config_key_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "config-reference.md").read_text()
    keys = [
        key for sections in SECTIONS.values() for _t, cls in sections for key, *_ in describe(cls)
    ]
    assert len(keys) > 20
    for key in keys:
        assert f"| `{key}` |" in text


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for script in re.findall(r"bash (scripts/\S+\.sh)", readme):
        assert (ROOT / script).exists(), script
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")


@pytest.mark.parametrize("prog", ["edge", "hub", "simulator"])
def test_help_runs(prog: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", prog, "--help"], capture_output=True, text=True, check=True
    )
    assert "usage:" in out.stdout
