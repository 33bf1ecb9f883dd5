"""Run one `bookrec` command in a child process and report its wall time and peak RSS.

The peak RSS is the command's own peak plus the largest peak of the processes it started and waited
for (ingest's second process, evaluation's shards): an upper bound on what it held at once, since
the two peaks need not coincide (and forked shards share their parent's pages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def _child_result(command: list[str], cwd: Path, marker: str, preexec_fn=None) -> dict:
    """Run `command`, return the JSON its stdout prints after `marker`, plus its wall time."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False, preexec_fn=preexec_fn
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith(marker)), None)
    result = None if line is None else json.loads(line[len(marker) :])
    if done.returncode != 0 or result is None or result.get("code", 0) != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result["wall_seconds"] = time.perf_counter() - started  # includes interpreter start and imports
    return result


def measure(args: list[str], cwd: Path, preexec_fn=None) -> dict:
    """`bookrec *args` in a child; `preexec_fn` runs in the child before it starts (a resource limit)."""
    return _child_result([sys.executable, "-c", CHILD, *args], cwd, "@@MEASURE@@", preexec_fn)


def measure_epoch(project: Path, preexec_fn=None) -> dict:
    """One training epoch of `project`'s params (benchmarks/train_epoch.py) in a child process."""
    script = Path(__file__).with_name("train_epoch.py")
    command = [sys.executable, str(script), "--root", str(project), "--devices", "cpu", "--json"]
    return _child_result(command, project, "@@EPOCH@@", preexec_fn)
