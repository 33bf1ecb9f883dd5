"""Run one `bookrec` command in a child process and report its wall time and peak memory.

Two memory figures. `peak_rss_mib`: the command's own peak RSS plus the largest peak of the processes
it started and waited for (ingest's second process, evaluation's shards): an upper bound on what it
held at once, since the two peaks need not coincide and forked shards share their parent's pages.
`peak_pss_mib`: the largest sum, over the command's process tree, of each process's proportional set
size (a page shared by n processes counts 1/n in each), sampled by psutil every `SAMPLE_SECONDS`:
the memory the tree held at once (a peak shorter than the interval can be missed)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.25

CHILD = """
import json, resource, sys, time
from pipeline.cli import app
started = time.perf_counter()
code = 0
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code or 0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("@@MEASURE@@" + json.dumps({"seconds": time.perf_counter() - started, "code": code,
      "peak_rss_mib": own + workers, "own_peak_rss_mib": own, "worker_peak_rss_mib": workers}))
"""


def _tree_pss_mib(root: psutil.Process) -> float:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        # a shard may end between the listing and the read
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += process.memory_full_info().pss
    return total / 2**20


class TreePss:
    """The largest PSS sum of a process tree, sampled on a thread until `stop`."""

    def __init__(self, pid: int):
        self.root, self.peak_mib = psutil.Process(pid), 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            try:
                self.peak_mib = max(self.peak_mib, _tree_pss_mib(self.root))
            except psutil.NoSuchProcess:
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mib


def _child_result(command: list[str], cwd: Path, marker: str, preexec_fn=None) -> dict:
    """Run `command`, return the JSON its stdout prints after `marker`, plus its wall time and the
    peak PSS of its process tree."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    pss = TreePss(child.pid)
    stdout, stderr = child.communicate()
    peak_pss = pss.stop()
    line = next((x for x in stdout.splitlines() if x.startswith(marker)), None)
    result = None if line is None else json.loads(line[len(marker) :])
    if child.returncode != 0 or result is None or result.get("code", 0) != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    result["wall_seconds"] = time.perf_counter() - started  # includes interpreter start and imports
    result["peak_pss_mib"] = peak_pss
    return result


def measure(args: list[str], cwd: Path, preexec_fn=None) -> dict:
    """`bookrec *args` in a child; `preexec_fn` runs in the child before it starts (a resource limit)."""
    return _child_result([sys.executable, "-c", CHILD, *args], cwd, "@@MEASURE@@", preexec_fn)


def measure_epoch(project: Path, preexec_fn=None) -> dict:
    """One training epoch of `project`'s params (benchmarks/train_epoch.py) in a child process."""
    script = Path(__file__).with_name("train_epoch.py")
    command = [sys.executable, str(script), "--root", str(project), "--devices", "cpu", "--json"]
    return _child_result(command, project, "@@EPOCH@@", preexec_fn)
