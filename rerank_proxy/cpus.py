"""How many CPUs this process may use: `WORKERS=auto` starts one worker for each, like nginx's `auto`.

The count is the CPUs the process may run on (its affinity mask, which honours cpusets and
`taskset`), lowered to a cgroup CPU quota when one is set (a container's `--cpus`, a pod's CPU
limit), rounded down and at least 1: a worker beyond the quota would only be throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """(count, why): why is a short phrase for the start-up log."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except (AttributeError, OSError):
        cpus, source = os.cpu_count() or 1, "os.cpu_count()"
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None and quota < cpus:
        return max(1, math.floor(quota)), f"cgroup CPU quota {quota:g} (of {cpus} CPUs by {source})"
    return cpus, f"{cpus} CPUs by {source}" + ("" if quota is None else f", within the cgroup CPU quota {quota:g}")


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup v2 path, or the v1 one; None if unlimited."""
    quotas = [q for q in (_v2_quota(d / "cpu.max") for d in _v2_dirs(cgroup_root, proc_cgroup)) if q is not None]
    v1 = _v1_quota(cgroup_root / "cpu")
    if v1 is not None:
        quotas.append(v1)
    return min(quotas) if quotas else None


def _v2_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup directory and its parents (a container sees its own cgroup as the root)."""
    relative = ""
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                relative = line[3:].strip().strip("/")
    except OSError:
        pass
    parts = relative.split("/") if relative else []
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period) if int(period) > 0 else None
    except ValueError:
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
