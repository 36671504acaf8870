"""The CPUs a container may use, from its cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cfs_period_us`).

A pod limited to 2 CPUs on a 64-core node still sees 64 cores in `os.sched_getaffinity`; sizing intra-op threads by
that runs 64 OpenMP threads in a 2-CPU quota, which the kernel throttles to a crawl (TEI's users hit this, TEI #405).
The quota is read along the process's cgroup path up to the root, and the tightest one applies, as the kernel
enforces it.
"""

from __future__ import annotations

import math
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def quota_cpus(quota_us: int, period_us: int) -> int:
    """Whole CPUs in a quota: rounded down (a thread more than the quota pays in throttling), at least one."""
    return max(1, math.floor(quota_us / period_us))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, relative: str) -> list[Path]:
    """`root/relative` and each parent folder up to `root` itself."""
    parts = [part for part in relative.strip("/").split("/") if part]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_limit(root: Path, relative: str) -> int | None:
    limits = []
    for folder in _ancestors(root, relative):
        text = _read(folder / "cpu.max")  # "max 100000" (no limit) or "200000 100000"
        if text is None:
            continue
        quota, _, period = text.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(quota_cpus(int(quota), int(period)))
    return min(limits) if limits else None


def _v1_limit(root: Path, relative: str) -> int | None:
    limits = []
    for controller in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        base = root / controller
        if not base.is_dir():
            continue
        for folder in _ancestors(base, relative):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota is None or period is None:
                continue
            if quota.lstrip("-").isdigit() and int(quota) > 0 and period.isdigit() and int(period) > 0:
                limits.append(quota_cpus(int(quota), int(period)))
        break
    return min(limits) if limits else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Whole CPUs the cgroup quota allows this process, or None where no quota is set (or no cgroup is readable).

    `self_cgroup` is `/proc/self/cgroup`: `0::/path` under cgroup v2, `N:cpu,cpuacct:/path` lines under v1. Inside a
    container the path is usually `/` (its own cgroup namespace); on a host it is the process's slice."""
    text = _read(self_cgroup) or ""
    v2_path, v1_path = None, None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    if (root / "cgroup.controllers").is_file():  # the unified (v2) hierarchy is mounted here
        return _v2_limit(root, v2_path or "/")
    return _v1_limit(root, v1_path or "/")
