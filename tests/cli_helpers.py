"""Running ``tc`` as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TC = [sys.executable, "-m", "trafficcontrol"]


def tc(*args: str, home: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``env``: the environment to run in instead of this process's."""
    env = {**kw.pop("env", os.environ), "TC_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run(
        [*TC, *args], capture_output=True, text=True, env=env, timeout=120, check=False, **kw
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"tc {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


def tc_json(*args: str, home: Path) -> Any:
    return json.loads(tc(*args, "--json", home=home).stdout)


def spawn_tc(*args: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TC_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.Popen(
        [*TC, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
