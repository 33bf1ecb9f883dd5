"""Progress of a pipeline run for the terminal of `make up` and `bookrec pipeline run`: JSON lines, one
event when a task starts and ends, one per training epoch, appended to the file named by
`BOOKREC_PROGRESS` (the launcher sets it; nothing is written otherwise, so stages run the same
everywhere). The launcher turns them into one line per stage and a progress bar for training, while
Airflow's own log goes to logs/pipeline.log."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "BOOKREC_PROGRESS"


def report(**event) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    # One short write in append mode: lines from the DAG process and the DVC stage it runs never mix.
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"at": time.time(), **event}, default=str) + "\n")


@contextmanager
def task(name: str) -> Iterator[dict]:
    """Report `name` started, then done (with its duration and what the body put in the yielded dict)
    or failed (with the error)."""
    started = time.perf_counter()
    report(task=name, state="started")
    details: dict = {}
    try:
        yield details
    except BaseException as err:
        report(
            task=name,
            state="failed",
            seconds=time.perf_counter() - started,
            error=f"{type(err).__name__}: {err}",
        )
        raise
    report(task=name, state="done", seconds=time.perf_counter() - started, **details)


class ProgressView:
    """Follows a progress file in a thread while a run goes on and prints what it says: a line per task
    when it ends (duration, or skipped because its inputs did not change), a tqdm bar for the epochs."""

    def __init__(self, path: Path, echo=print, poll_seconds: float = 0.2):
        self.path, self.echo, self.poll_seconds = path, echo, poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="progress", daemon=True)
        self._bar = None

    def __enter__(self) -> ProgressView:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_bar()

    def _follow(self) -> None:
        offset = 0
        while True:
            stopping = self._stop.is_set()
            with self.path.open(encoding="utf-8") as events:
                events.seek(offset)
                for line in iter(events.readline, ""):
                    if not line.endswith("\n"):
                        break  # a line being written: read it whole next time
                    offset += len(line.encode("utf-8"))
                    self.show(json.loads(line))
            if stopping:
                return
            self._stop.wait(self.poll_seconds)

    def show(self, event: dict) -> None:
        if "epoch" in event:
            self._epoch(event)
            return
        state = event.get("state")
        if state not in ("done", "failed"):
            return
        self._close_bar()
        name, seconds = event["task"], event.get("seconds", 0.0)
        if state == "failed":
            self.echo(f"  {name:<20} FAILED after {seconds:.1f} s: {event.get('error', '')}")
        elif event.get("skipped"):
            self.echo(f"  {name:<20} skipped (inputs unchanged, {seconds:.1f} s)")
        else:
            extra = "".join(
                f", {key} {event[key]}"
                for key in ("only", "version", "promoted", "experiment")
                if key in event
            )
            self.echo(f"  {name:<20} done in {seconds:.1f} s{extra}")

    def _epoch(self, event: dict) -> None:
        from tqdm import tqdm

        if self._bar is None:
            # started at the first epoch's end: a rate would be meaningless, the elapsed time is not
            self._bar = tqdm(
                total=event["epochs"],
                desc=f"  {'train':<20}",
                bar_format="{desc} {bar:20} epoch {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                leave=False,
            )
        if "val_ndcg_at_10" in event:
            self._bar.set_postfix({"val NDCG@10": f"{event['val_ndcg_at_10']:.4f}"}, refresh=False)
        self._bar.update(event["epoch"] - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
