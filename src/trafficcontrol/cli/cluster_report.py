"""What ``tc cluster --json`` and ``GET /api/cluster`` say: the leases of a shared store,
the instances' heartbeats and the workers', as plain data."""

from __future__ import annotations

from typing import Any

from trafficcontrol.cli import formats
from trafficcontrol.ports import InstanceInfo, LeaseInfo, WorkerInfo

GONE_AFTER_S = 30.0
"""An instance not heard of for this long is shown as gone."""


def role_of(instance: InstanceInfo, leases: list[LeaseInfo]) -> str:
    """The role as the store sees it: a leader only while it holds a live lease."""
    if instance.store_now - instance.seen_at > GONE_AFTER_S:
        return "gone"
    holds = any(lease.live and lease.holder == instance.beat.instance for lease in leases)
    if instance.beat.role == "leader" and not holds:
        return "lost lead"
    return instance.beat.role


def cluster_dict(
    leases: list[LeaseInfo],
    instances: list[InstanceInfo],
    workers: list[WorkerInfo] | None = None,
) -> dict[str, Any]:
    head = max((i.beat.seq for i in instances if i.beat.role == "leader"), default=None)
    return {
        "leases": [
            {
                "shard": lease.shard,
                "holder": lease.holder,
                "epoch": lease.epoch,
                "live": lease.live,
                "expires_in_s": round(lease.expires_at - lease.store_now, 3),
                "acquired_at": formats.stamp(lease.acquired_at),
            }
            for lease in leases
        ],
        "instances": [
            {
                "instance": i.beat.instance,
                "host": i.beat.host,
                "pid": i.beat.pid,
                "role": role_of(i, leases),
                "version": i.beat.version,
                "seq": i.beat.seq,
                "lag_events": None if head is None else max(0, head - i.beat.seq),
                "seen_s_ago": round(i.store_now - i.seen_at, 3),
                "started_at": formats.stamp(i.started_at),
                "details": i.beat.details,
            }
            for i in instances
        ],
        "workers": [
            {
                "host_id": w.host_id,
                "projects": w.projects,
                "max_agents": w.max_agents,
                "running": w.running,
                "version": w.version,
                "seen_s_ago": round(w.seen_s_ago, 3),
                "gone": w.seen_s_ago > GONE_AFTER_S,
            }
            for w in workers or []
        ],
    }
