"""Every ``--flag`` that seamfree's messages, help texts and docstrings name exists in its command line (a message
that sends the user to a flag that does not exist is worse than none)."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import seamfree
from seamfree.cli.parser import build_parser

SOURCE = Path(seamfree.__file__).parent
# other programs' flags that seamfree passes on (the headless Chromium that renders the report; sbatch's, in the
# scripts of seamfree submit)
FOREIGN = {"report.py": {"--headless", "--disable-gpu", "--no-sandbox", "--screenshot", "--dump-dom",
                         "--hide-scrollbars", "--user-data-dir", "--virtual-time-budget", "--window-size"},
           "submit.py": {"--requeue", "--dependency", "--open-mode", "--parsable", "--qos", "--job-name", "--chdir",
                         "--signal", "--array"}}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


def test_every_flag_named_in_the_source_exists():
    known = _parser_flags(build_parser())
    assert {"--halo", "--allow-small-halo", "--axes", "--key", "--series", "--labels"} <= known
    named: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in FLAG.findall(node.value):
                    if flag not in FOREIGN.get(path.name, set()):
                        named.setdefault(flag, set()).add(str(path.relative_to(SOURCE)))
    assert len(named) > 30  # the scan sees the messages
    unknown = {flag: sorted(where) for flag, where in named.items() if flag not in known}
    assert not unknown, f"messages name flags the CLI does not have: {unknown}"


def test_every_flag_of_a_seamfree_command_in_the_docs_exists():
    known = _parser_flags(build_parser())
    root = SOURCE.parent.parent
    documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    unknown = []
    for document in documents:
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            if "seamfree " not in line or "pip install" in line:
                continue
            unknown += [f"{document.name}:{number} {flag}" for flag in FLAG.findall(line) if flag not in known]
    assert not unknown, f"the docs name flags the CLI does not have: {unknown}"
