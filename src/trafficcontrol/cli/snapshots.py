"""``tc snapshot list | create | verify [VERSION] | rollback VERSION [--dry-run]``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, fail, make_app, out, send
from trafficcontrol.cli.formats import when
from trafficcontrol.domain.requests import RollbackRequest, SnapshotRequest
from trafficcontrol.errors import TrafficControlError

snapshot_app = typer.Typer(help="Snapshots of the state: list, create, verify, roll back.")


@snapshot_app.command("list")
def list_snapshots(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Snapshots on disk, oldest first (header facts only; `verify` checks contents)."""
    infos = make_app(home).snapshot_files().list()
    rows = [
        {
            "version": i.version,
            "seq": i.meta.seq if i.meta else None,
            "created_at": when(i.meta.created_at) if i.meta else None,
            "size": i.meta.size if i.meta else None,
            "instance": i.meta.instance if i.meta else None,
            "schema": i.meta.schema if i.meta else None,
            "path": str(i.path),
            "problem": i.problem,
        }
        for i in infos
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("no snapshots")
        return
    table = Table(title="Snapshots")
    for column in ("version", "seq", "created", "size", "instance", "problem"):
        table.add_column(column)
    for r in rows:
        size = f"{r['size']:,} B" if r["size"] is not None else "-"
        table.add_row(
            str(r["version"]),
            str(r["seq"] if r["seq"] is not None else "-"),
            str(r["created_at"] or "-"),
            size,
            str(r["instance"] or "-"),
            str(r["problem"] or ""),
        )
    out.print(table)


@snapshot_app.command("create")
def create(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Write a snapshot now (through the running orchestrator when there is one)."""
    result = send(make_app(home), SnapshotRequest())
    if as_json:
        emit_json({"ok": result.ok, "message": result.message})
    elif result.ok:
        out.print(result.message, highlight=False)
    if not result.ok:
        fail(result.message)


@snapshot_app.command("verify")
def verify(
    version: Annotated[int | None, typer.Argument(help="One snapshot [default: all].")] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check checksums, headers and schemas; exit 1 naming each bad file and its fault."""
    app_ = make_app(home)
    store = app_.snapshot_files()
    try:
        problems = store.verify(version)
    except TrafficControlError as exc:
        fail(exc.message)
    checked = 1 if version is not None else len(store.list())
    if as_json:
        emit_json(
            {
                "checked": checked,
                "problems": [{"path": str(p.path), "fault": p.fault} for p in problems],
            }
        )
    else:
        for problem in problems:
            out.print(f"BAD {problem.message}", highlight=False)
        if not problems:
            out.print(f"{checked} snapshot(s) OK")
    if problems:
        raise typer.Exit(1)


@snapshot_app.command("rollback")
def rollback(
    version: Annotated[int, typer.Argument(help="Snapshot version (see `tc snapshot list`).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would change.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make the state that snapshot's again, as a new journal event (nothing is erased).
    Agents running for tasks whose state changes are stopped first."""
    result = send(make_app(home), RollbackRequest(version=version, dry_run=dry_run))
    if as_json:
        emit_json({"ok": result.ok, "message": result.message, "changes": result.details})
        if not result.ok:
            raise typer.Exit(1)
        return
    if not result.ok:
        fail(result.message, result.details)
    out.print(result.message, highlight=False)
    for line in result.details:
        out.print(f"  {line}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
