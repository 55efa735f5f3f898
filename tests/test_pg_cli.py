"""``tc`` on PostgreSQL from the command line: ``--store``/``TC_STORE``, ``tc db
status|migrate|copy``, and bad stores refused in one line with the password masked."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.cli_helpers import tc, tc_json
from tests.helpers import agent_argv, make_app, project, submit, task
from tests.pg import FatalServer
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.model import AgentSettings
from trafficcontrol.domain.state import fold

pytestmark = [pytest.mark.e2e]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_a_backlog_runs_on_postgres_and_copies_to_sqlite_and_back(
    pg_url: str, pg_empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TC_STORE", pg_url)
    home = tmp_path / "home"
    app = make_app(home)
    work = AgentSettings(command=agent_argv("--exit", "0"))
    submit(
        app,
        [project(tmp_path / "p", agent="command", command=work.command)],
        [task("a"), task("b", deps=["a"]), task("c", deps=["a"])],
    )
    app.close()
    tc("run", "--no-live", home=home)
    assert tc_json("status", home=home)["by_state"]["done"] == 3
    assert not (home / "journal.db").exists(), "the journal is in the database"
    status = tc_json("db", "status", home=home)
    assert status["kind"] == "postgresql" and status["schema"] == status["latest"] >= 1
    assert status["events"] > 0
    tc("verify", "--settled", home=home)

    copy_db = tmp_path / "copy.db"
    copied = json.loads(
        tc("db", "copy", pg_url, f"sqlite:///{copy_db}", "--json", home=home).stdout
    )
    assert copied["ok"] and copied["same_state"] and copied["events"] == status["events"]
    back = json.loads(
        tc("db", "copy", f"sqlite:///{copy_db}", pg_empty_url, "--json", home=home).stdout
    )
    assert back["ok"] and back["events"] == status["events"]
    states = []
    for url in (pg_url, pg_empty_url):
        monkeypatch.setenv("TC_STORE", url)
        other = App(Home(home), environ={"TC_STORE": url})
        try:
            states.append(snapshot.encode(fold([e for _s, e in other.journal().read()])))
        finally:
            other.close()
    assert states[0] == states[1]
    refused = tc("db", "copy", f"sqlite:///{copy_db}", pg_url, home=home, check=False)
    assert refused.returncode == 2 and "copy only into an empty store" in refused.stderr


def test_an_unknown_scheme_is_one_line(tmp_path: Path) -> None:
    done = tc("--store", "mysql://u:hunter2@h/db", "status", home=tmp_path, check=False)
    assert done.returncode != 0
    line = one_error_line(done.stderr)
    assert "expected sqlite:///PATH or postgresql://" in line and "hunter2" not in line


def test_a_wrong_password_is_one_line_naming_the_masked_url(tmp_path: Path) -> None:
    with FatalServer("28P01", 'password authentication failed for user "tc"') as port:
        url = f"postgresql://tc:hunter2@127.0.0.1:{port}/tc"
        done = tc("--store", url, "status", home=tmp_path, check=False)
    assert done.returncode != 0
    line = one_error_line(done.stderr)
    assert "hunter2" not in done.stderr and "password authentication failed" in line
    assert f"127.0.0.1:{port}" in line


def test_a_schema_from_the_future_is_refused_and_nothing_written(
    pg_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM schema_version").fetchone()
        conn.execute("INSERT INTO schema_version(version, name) VALUES (99, 'future')")
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    done = tc(
        "--store", pg_url, "add", "x", "--project", "p", "--prompt", "y", home=tmp_path, check=False
    )
    assert done.returncode != 0
    line = one_error_line(done.stderr)
    assert "99" in line and "upgrade" in line
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        again = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert again == tables and before is not None


def test_reading_a_database_without_our_schema_says_so_and_writes_nothing(
    pg_empty_url: str, tmp_path: Path
) -> None:
    for command in (["status"], ["show", "a"], ["profile"], ["db", "status", "--json"]):
        done = tc("--store", pg_empty_url, *command, home=tmp_path, check=False)
        if command[0] == "db":
            assert json.loads(done.stdout)["schema"] == 0
            continue
        assert done.returncode != 0, command
        line = one_error_line(done.stderr)
        assert "no state in postgresql://" in line and "tc submit" in line
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,), "a read created tables"
