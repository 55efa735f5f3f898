"""``tc cluster`` (who leads, who stands by, how far behind) and ``tc handoff`` (hand
the lead to a standby without stopping the agents): several ``tc run`` on one
PostgreSQL store."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, fail, make_app, out, report
from trafficcontrol.cli.cluster_report import cluster_dict, role_of
from trafficcontrol.domain.requests import HandoffRequest
from trafficcontrol.ports import InstanceInfo, LeaseInfo, WorkerInfo


def register(app: typer.Typer) -> None:
    """Add ``cluster`` and ``handoff`` to ``app`` (once, however often it is called)."""
    names = {command.name for command in app.registered_commands}
    if "cluster" not in names:
        app.command("cluster")(cluster_command)
    if "handoff" not in names:
        app.command("handoff")(handoff_command)


def _leases_of(app_: App) -> tuple[list[LeaseInfo], list[InstanceInfo], list[WorkerInfo]]:
    if app_.on_sqlite:
        fail(
            "this home's store is SQLite: one tc run, no cluster (set [run] store or --store"
            " to a postgresql:// URL to run several)"
        )
    leases = app_.leases()
    return leases.leases(), leases.instances(), app_.work_queue().workers()


def cluster_command(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Instances sharing this store: roles, lease epoch, how far each has read."""
    app_ = make_app(home)
    try:
        data = cluster_dict(*_leases_of(app_))
    finally:
        app_.close()
    if as_json:
        emit_json(data)
        return
    leases = Table("shard", "leader", "epoch", "lease", title="Leases")
    for lease in data["leases"]:
        state = f"expires in {lease['expires_in_s']:.1f}s" if lease["live"] else "free"
        leases.add_row(lease["shard"], lease["holder"], str(lease["epoch"]), state)
    instances = Table("instance", "role", "host", "pid", "version", "seq", "lag", "seen")
    for i in data["instances"]:
        lag = "-" if i["lag_events"] is None else f"{i['lag_events']} events"
        instances.add_row(
            i["instance"],
            i["role"],
            i["host"],
            str(i["pid"]),
            i["version"],
            str(i["seq"]),
            lag,
            f"{i['seen_s_ago']:.1f}s ago",
        )
    out.print(leases if data["leases"] else "no lease was ever taken on this store")
    out.print(instances if data["instances"] else "no instance has reported")
    if data["workers"]:
        workers = Table("worker", "projects", "agents", "version", "seen", title="Workers")
        for w in data["workers"]:
            seen = "gone" if w["gone"] else f"{w['seen_s_ago']:.1f}s ago"
            workers.add_row(
                w["host_id"],
                ", ".join(w["projects"]),
                f"{w['running']}/{w['max_agents']}",
                w["version"],
                seen,
            )
        out.print(workers)


def handoff_command(
    home: HomeOption = None,
    as_json: JsonOption = False,
    wait_s: Annotated[
        float, typer.Option(help="How long to wait for a standby to take the lead.")
    ] = 30.0,
    force: Annotated[
        bool, typer.Option(help="Hand off even when no standby is running (the agents wait).")
    ] = False,
) -> None:
    """Hand the lead to a standby: the leader stops dispatching, leaves its agents
    running, journals its stop and releases its lease; a standby adopts the agents."""
    app_ = make_app(home)
    try:
        before, instances, _workers = _leases_of(app_)
        standbys = [i for i in instances if role_of(i, before) == "standby"]
        if not standbys and not force:
            fail(
                "no standby is running to take over: start tc run with the same store"
                " elsewhere first (or --force: the agents run on until a tc run adopts them)"
            )
        result = app_.request(HandoffRequest())
        if not result.ok or as_json:
            report(result, as_json=as_json, what="handoff")
            return
        out.print(result.message)
        old = {lease.shard: lease.epoch for lease in before}
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            taken = [
                lease
                for lease in app_.leases().leases()
                if lease.live
                and lease.epoch > old.get(lease.shard, 0)
                and not lease.holder.startswith("tc-cli:")
            ]
            if taken:
                for lease in taken:
                    out.print(f"{lease.holder} leads now (epoch {lease.epoch})")
                return
            time.sleep(0.1)  # waiting on other processes: nothing to await
        fail(f"no standby took the lead within {wait_s:g}s (is one running?)")
    finally:
        app_.close()
