"""``tc db migrate | status | copy FROM_URL TO_URL``: the store's schema and moving a
state home's journal between stores (SQLite ⇄ PostgreSQL).

A copy reads every event of the source in order and appends them to an empty target
in batches, then checks the target: the same number of events, the invariants
(``tc verify``'s), and the same folded state as the source's. Nothing is written
to a target that already holds events.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trafficcontrol.adapters.stores.urls import mask_url
from trafficcontrol.bootstrap import open_journal, store_kind
from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, fail, make_app, out
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.state import State, apply, fold
from trafficcontrol.errors import TrafficControlError

db_app = typer.Typer(help="The store: its schema, and copying a journal between stores.")
BATCH = 1000


def register(app: typer.Typer) -> None:
    """Add ``db`` to ``app`` (once, however often it is called)."""
    if "db" not in {group.name for group in app.registered_groups}:
        app.add_typer(db_app, name="db")


def _schema(url: str) -> tuple[int, int]:
    from trafficcontrol.adapters.stores.pg_schema import schema_status

    return schema_status(url)


@db_app.command("status")
def status_command(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """The store in use, its schema version and the newest this tc knows."""
    app_ = make_app(home)
    url = app_.store_url
    try:
        kind = store_kind(url)
        if kind == "sqlite":
            current = latest = 1
            events = app_.journal().last_seq() if app_.has_state() else 0
        else:
            current, latest = _schema(url)
            events = app_.journal().last_seq() if current else 0
    except TrafficControlError as exc:
        fail(exc.message, code=2)
    finally:
        app_.close()
    data = {"store": mask_url(url), "kind": kind, "schema": current, "latest": latest}
    data["events"] = events
    if as_json:
        emit_json(data)
        return
    out.print(
        f"store: {data['store']} ({kind}); schema {current} of {latest}; {events} events",
        highlight=False,
    )


@db_app.command("migrate")
def migrate_command(home: HomeOption = None) -> None:
    """Bring the store's schema to this tc's version (under a lock: one migrates, the
    others wait). SQLite files are migrated when they are opened."""
    app_ = make_app(home)
    url = app_.store_url
    try:
        if store_kind(url) == "sqlite":
            app_.journal()
            out.print(f"store: {mask_url(url)}: schema up to date", highlight=False)
            return
        from trafficcontrol.adapters.stores.pg_schema import migrate

        before, after = migrate(url)
    except TrafficControlError as exc:
        fail(exc.message, code=2)
    finally:
        app_.close()
    change = "up to date" if before == after else f"migrated from {before} to {after}"
    out.print(f"store: {mask_url(url)}: schema {change}", highlight=False)


def copy_journal(source_url: str, target_url: str) -> dict[str, Any]:
    """Copy every event (module notes); the report. Raises our errors."""
    source = open_journal(source_url)
    try:
        target = open_journal(target_url)
    except BaseException:
        source.close()
        raise
    try:
        if target.last_seq() != 0:
            raise TrafficControlError(
                f"{mask_url(target_url)} already holds {target.last_seq()} events:"
                " copy only into an empty store"
            )
        folded_source = State()
        copied = 0
        batch: list[AnyEvent] = []
        for _seq, event in source.read():
            batch.append(event)
            apply(folded_source, event)
            if len(batch) >= BATCH:
                target.append(batch)
                copied += len(batch)
                batch = []
        if batch:
            target.append(batch)
            copied += len(batch)
        again = [event for _seq, event in target.read()]
        same = snapshot.encode(folded_source) == snapshot.encode(fold(again))
        problems = verify_journal(again, SchedulerConfig(max_agents=10_000))
        return {
            "from": mask_url(source_url),
            "to": mask_url(target_url),
            "events": copied,
            "read_back": len(again),
            "same_state": same,
            "violations": problems,
        }
    finally:
        source.close()
        target.close()


@db_app.command("copy")
def copy_command(
    from_url: Annotated[str, typer.Argument(metavar="FROM_URL", help="The store to read.")],
    to_url: Annotated[str, typer.Argument(metavar="TO_URL", help="An empty store to fill.")],
    as_json: JsonOption = False,
) -> None:
    """Copy a journal to another store (SQLite ⇄ PostgreSQL), then check the copy:
    the same events, every invariant, the same folded state."""
    try:
        report = copy_journal(from_url, to_url)
    except TrafficControlError as exc:
        fail(exc.message, code=2)
    ok = report["same_state"] and report["events"] == report["read_back"]
    if as_json:
        emit_json({"ok": ok, **report})
    else:
        out.print(
            f"copied {report['events']} events from {report['from']} to {report['to']};"
            f" read back {report['read_back']}; same state: {report['same_state']};"
            f" invariants: {'ok' if not report['violations'] else report['violations'][:3]}",
            highlight=False,
        )
    if not ok:
        raise typer.Exit(1)
