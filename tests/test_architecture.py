"""The layer rules of DESIGN.md, enforced in the test run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "trafficcontrol"
FORBIDDEN_IN_DOMAIN = {"asyncio", "subprocess", "time", "os", "sqlite3", "socket", "random"}


def test_import_linter_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint)], capture_output=True, text=True, cwd=SRC.parent.parent, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_domain_imports_no_io_modules() -> None:
    offenders = []
    for path in sorted((SRC / "domain").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_DOMAIN
            ]
    assert offenders == []


def test_nothing_below_the_cli_reads_the_environment() -> None:
    # The two entry points: tc itself, and the supervisor process of each attempt.
    allowed = {SRC / "cli" / "app.py", SRC / "cli" / "supervise.py"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("environ", "getenv", "environb")
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
