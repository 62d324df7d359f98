"""One device rule for every command: ssd.device.resolve_device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssd import SSDError
from ssd.device import resolve_device


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SSDError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda", "--device")


def test_cuda_always_comes_back_indexed(monkeypatch):
    """`torch.cuda.set_device(torch.device("cuda"))` raises (seen on an H100): "cuda" must name its index."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(SSDError, match="has 2 CUDA device"):
        resolve_device("cuda:5", "--device")


@pytest.mark.parametrize("bad", ["bogus", "tpu", "cuda:x"])
def test_bad_names_are_refused_with_the_option_named(bad):
    with pytest.raises(SSDError, match="^--device"):
        resolve_device(bad, "--device")


class _Stat:
    """A /proc/stat whose successive reads give the samples listed: each a list of per-CPU (busy, idle) jiffies."""

    def __init__(self, *samples: list[tuple[int, int]]) -> None:
        self.samples = list(samples)

    def read_text(self) -> str:
        cpus = self.samples.pop(0)
        lines = [f"cpu  {sum(b for b, _ in cpus)} 0 0 {sum(i for _, i in cpus)} 0 0 0 0 0 0"]
        lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(cpus)]
        return "\n".join(lines + ["intr 0", "ctxt 0"]) + "\n"


def _idle(first, second, cpus=2, cpu_set=None):
    from ssd.device import idle_cpus

    return idle_cpus(cpus, seconds=0, stat=_Stat(first, second), cpu_set=cpu_set)


def test_idle_cpus_counts_cpus_other_work_keeps_busy():
    start = [(100, 1000), (100, 1000)]
    assert _idle(start, [(200, 1000), (100, 1100)]) == 1  # one CPU fully busy over the sample
    assert _idle(start, [(100, 1100), (100, 1100)]) == 2  # all idle
    assert _idle(start, [(150, 1050), (100, 1100)]) == 2  # half a CPU's worth: a burst, not a taken CPU
    assert _idle(start, [(195, 1005), (195, 1005)]) == 1  # both 95% busy: 1.9 CPUs, one taken, never below one
    assert _idle(start, [(200, 1000), (200, 1000)]) == 1  # all busy: still one thread
    assert _idle(start, [(200, 1000), (100, 1100)], cpus=1) == 1  # capped by cpus
    # pinned to CPU 1, which is idle, while CPU 0 is busy: the process's own CPUs count
    assert _idle(start, [(200, 1000), (100, 1100)], cpus=1, cpu_set={1}) == 1
    assert _idle(start, [(200, 1000), (100, 1100)], cpus=2, cpu_set={1}) == 1  # one CPU in the set
    from ssd.device import idle_cpus

    assert idle_cpus(2, seconds=0, stat=Path("/nonexistent/proc/stat")) == 2  # unreadable: all of them


def test_prepare_cpu_threads_keeps_the_users_setting():
    from ssd.device import prepare_cpu_threads

    env = {"OMP_NUM_THREADS": "3"}
    prepare_cpu_threads(env)
    assert env == {"OMP_NUM_THREADS": "3"}
    for env in ({}, {"OMP_NUM_THREADS": " "}):
        prepare_cpu_threads(env)
        assert 1 <= int(env["OMP_NUM_THREADS"])


def test_idle_cpus_sees_a_busy_process():
    """The kernel as the oracle: with a process spinning on one CPU, at most cpu_count - 1 are free."""
    import os
    import subprocess
    import sys

    from ssd.device import idle_cpus

    from ssd.device import available_cpus

    cpus = available_cpus()
    if cpus < 2 or cpus < (os.cpu_count() or 1) or not os.path.exists("/proc/stat"):
        pytest.skip("needs Linux and two CPUs, all of them this process's, unthrottled")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)  # the interpreter is up and spinning
        assert idle_cpus(cpus, seconds=0.5) <= cpus - 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, 4),
        ({"cpu.max": "max 100000\n"}, 4),
        ({"cpu.max": "150000 100000\n"}, 1),
        ({"cpu.max": "250000 100000\n"}, 2),
        ({"cpu.max": "800000 100000\n"}, 4),  # a quota above the CPU set: the set
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
    ],
)
def test_available_cpus_is_the_cpu_set_capped_by_the_quota(tmp_path, monkeypatch, files, expected):
    import os

    from ssd.device import available_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(tmp_path) == expected


def test_the_command_line_sets_torch_threads_before_torch_loads():
    """A fresh interpreter: the user's OMP_NUM_THREADS is kept; without one, torch runs the count chosen."""
    import os
    import subprocess
    import sys

    code = ("import os, sys\nfrom ssd.cli import main\nmain(['eval', '/nonexistent/model.ckpt', '--data', '/nonexistent/test.json'])\nimport torch\n"
            "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    chosen, used = out.stdout.split()[-2:]
    assert chosen == used and 1 <= int(used) <= (os.cpu_count() or 1)
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.stdout.split()[-2:] == ["1", "1"]
