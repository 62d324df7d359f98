"""Choosing the device: one rule for every command and API.

Importing this module does not import torch (the command line builds its help from :data:`DEVICE_HELP`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from ssd.errors import SSDError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA, then Apple MPS, then the CPU; the default), cpu, cuda, cuda:N or mps"
"""The choices of every command's ``--device``, as its help text says them."""


def resolve_device(name: str | torch.device | None = "auto", option: str = "device") -> torch.device:
    """``auto`` (CUDA, then Apple MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    A CUDA device always comes back with its index (``cuda`` is the current device), so it compares equal
    to the device of a tensor on it and can be passed to ``torch.cuda.set_device``. Errors are
    :class:`SSDError` messages that start with ``option`` (e.g. ``--device``)."""
    import torch

    if isinstance(name, torch.device) and not (name.type == "cuda" and name.index is None):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise SSDError(f"{option} {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SSDError(f"{option} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SSDError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SSDError(f"{option} {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise SSDError(f"{option} {name}: use auto, cpu, cuda, cuda:N or mps")
    return device


def channels_last_default(device: torch.device) -> bool:
    """Whether convolutions run channels-last (NHWC) by default on ``device``: on CUDA and on the CPU, where
    oneDNN's NHWC kernels make SSD300's forward faster (measured: docs/performance.md, "CPU"); not on MPS."""
    return device.type in ("cuda", "cpu")


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convert ``model``'s 4-d parameters and buffers to channels-last in place (values unchanged)."""
    import torch

    return model.to(memory_format=torch.channels_last)


CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask (``taskset``, a batch scheduler's CPU set), capped by a
    container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), at least 1. ``os.cpu_count()`` counts
    the machine's CPUs, which a process in a container or a CPU set may not have."""
    cpu_set = _cpu_set()
    count = len(cpu_set) if cpu_set is not None else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cpu_set() -> set[int] | None:
    """The CPUs this process's affinity allows, or None where the system does not say (not Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None where no quota is set or readable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "150000 100000"
    except (OSError, ValueError):
        try:  # v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except (OSError, ValueError):
            return None
    try:
        q, t = float(quota), float(period)
    except ValueError:  # "max": no quota
        return None
    return q / t if q > 0 and t > 0 else None


BUSY_CPU = 0.9
"""A CPU counts as taken by other work when at least this share of it was busy over the sample: a short burst
(an editor, a browser tab) does not cost a long run a thread."""


def _cpu_times(stat: Path, cpus: set[int] | None) -> dict[int, tuple[int, int]]:
    """(total, idle + iowait) jiffies of each ``cpuN`` line of ``/proc/stat`` (only those in ``cpus``)."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        n = int(name[3:])
        if cpus is None or n in cpus:
            fields = [int(v) for v in values[:8]]  # user .. steal; guest time is counted in user already
            times[n] = (sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0))
    return times


def idle_cpus(cpus: int, seconds: float = 0.2, stat: Path = Path("/proc/stat"), cpu_set: set[int] | None = None) -> int:
    """How many of ``cpus`` other work leaves free: over ``seconds`` while this process sleeps, the CPUs of
    ``cpu_set`` (default: this process's affinity) from ``/proc/stat`` that were at least :data:`BUSY_CPU` busy
    in all, subtracted from ``cpus``; at least 1, and ``cpus`` where the file cannot be read."""
    cpu_set = cpu_set if cpu_set is not None else _cpu_set()
    try:
        before = _cpu_times(stat, cpu_set)
        time.sleep(seconds)
        after = _cpu_times(stat, cpu_set)
    except (OSError, ValueError, IndexError):  # not Linux, no /proc, an unexpected layout
        return cpus
    busy = 0.0  # CPUs' worth of other work (this process slept)
    for n, (total, idle) in after.items():
        total0, idle0 = before.get(n, (total, idle))
        if total > total0:
            busy += 1 - (idle - idle0) / (total - total0)
    return max(1, min(cpus, len(after) - int(busy + 1 - BUSY_CPU))) if after else cpus


def prepare_cpu_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Before torch is imported: as many OpenMP threads as there are CPUs free for this process. Never raises.

    ``OMP_NUM_THREADS`` becomes :func:`idle_cpus` of :func:`available_cpus` unless the user set it (an empty value
    counts as unset). OpenMP's threads wait for each other at the end of every parallel region, so on a machine
    where other work holds a core, a thread that is not scheduled stalls the others (measured:
    docs/performance.md, "The demo under CPU contention"). The count is read once, when torch loads, so the
    command line calls this before anything imports torch; in Python, call it (or set the variable) before
    ``import torch``. It is chosen once: work that starts or ends later does not change it. The thread count
    can change a run's last bits (the order of sums), so a run is repeatable on one machine at one count.
    """
    if not environ.get("OMP_NUM_THREADS", "").strip():
        environ["OMP_NUM_THREADS"] = str(idle_cpus(available_cpus()))
