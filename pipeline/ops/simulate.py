"""The replay simulator (`bookrec simulate`): held-out test interactions played as readers of the real
API, on loopback, bounded in requests and time.

Each simulated reader is a reader with test interactions. They ask for recommendations; every book of
their test set that they are shown they "read" (rating 0, naming the list's request id), so it leaves
their next lists. This exercises impressions, attribution, the A/B experiment and the Monitoring
page end to end, and shows whether online click-through orders two models as offline NDCG does.

By default the simulator starts its own API on a free loopback port over a scratch feedback store
under `run/simulation/`, so replayed test interactions never reach the live store (and from there
the next training run). With `url`, it drives a running API instead (loopback only), whose store
then holds the replay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

from pipeline import io
from pipeline.config import ExperimentParams, Params, Workspace
from pipeline.online import ExperimentPlan
from pipeline.statistics import ratio_interval

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ArmTally:
    lists: int = 0
    clicked_lists: int = 0
    clicks: int = 0
    versions: set[str] = field(default_factory=set)
    by_reader: dict[str, list[int]] = field(default_factory=dict)  # reader -> [lists, clicked lists]

    def add(self, user: str, version: str, hits: int) -> None:
        self.lists += 1
        self.clicked_lists += bool(hits)
        self.clicks += hits
        self.versions.add(version)
        counts = self.by_reader.setdefault(user, [0, 0])
        counts[0] += 1
        counts[1] += bool(hits)

    def summary(self, confidence: float = 0.95) -> dict:
        counts = np.array(list(self.by_reader.values()), dtype=np.float64).reshape(-1, 2)
        ctr, low, high = ratio_interval(counts[:, 1], counts[:, 0], confidence)
        return {
            "lists": self.lists,
            "readers": len(self.by_reader),
            "clicks": self.clicks,
            "ctr": ctr,
            "ctr_low": low,
            "ctr_high": high,
            "versions": sorted(self.versions),
        }


def held_out(ws: Workspace) -> dict[str, set[str]]:
    """Reader id -> the ISBNs of their test interactions."""
    test = io.read_parquet(ws.processed / "test.parquet")
    users = io.read_parquet(ws.processed / "users.parquet").set_index("user_idx")["user_id"].astype(str)
    items = io.read_parquet(ws.processed / "items.parquet").set_index("item_idx")["isbn"].astype(str)
    readers: dict[str, set[str]] = {}
    for user, isbn in zip(users.loc[test["user_idx"]], items.loc[test["item_idx"]], strict=True):
        readers.setdefault(user, set()).add(isbn)
    return readers


def replay(
    url: str,
    token: str,
    readers: dict[str, set[str]],
    requests: int,
    seconds: float,
    k: int,
    seed: int,
    confidence: float = 0.95,
) -> dict:
    """Play up to `requests` requests (or `seconds`) against the API at `url`; the tallies per arm."""
    if urlparse(url).hostname not in LOOPBACK:
        raise ValueError(f"the simulator only drives an API on loopback, not {url}")
    order = sorted(readers)
    np.random.default_rng(seed).shuffle(order)
    remaining = {user: set(books) for user, books in readers.items()}
    tallies: dict[str, ArmTally] = {}
    started, sent = time.monotonic(), 0
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        while sent < requests and time.monotonic() - started < seconds:
            user = order[sent % len(order)]
            sent += 1
            # The evaluation protocol's lists: the served model knows the test interactions, and would
            # never show them.
            answer = _within_rate(
                client, "GET", f"/recommendations/{user}", params={"k": k, "history": "train"}
            )
            answer.raise_for_status()
            body = answer.json()
            hits = [b["isbn"] for b in body["books"] if b["isbn"] in remaining[user]]
            tallies.setdefault(body["arm"], ArmTally()).add(user, body["model_version"], len(hits))
            for isbn in hits:
                payload = {"isbn": isbn, "rating": 0, "request_id": body["request_id"]}
                _within_rate(
                    client, "POST", f"/users/{user}/interactions", json=payload, headers=auth
                ).raise_for_status()
                remaining[user].discard(isbn)
    return {
        "requests": sent,
        "seconds": round(time.monotonic() - started, 1),
        "arms": {arm: tally.summary(confidence) for arm, tally in sorted(tallies.items())},
    }


def _within_rate(
    client: httpx.Client, method: str, url: str, attempts: int = 30, **options
) -> httpx.Response:
    """The request, sent again after the wait a 429 names (a running API limits requests per client)."""
    for _ in range(attempts):
        answer = client.request(method, url, **options)
        if answer.status_code != 429:
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    return answer


@contextmanager
def scratch_api(root: Path, params: Params, experiment: ExperimentParams, plan: ExperimentPlan | None = None):
    """`bookrec serve` on a free loopback port over a new scratch feedback store, with `experiment`
    set at run time (and `plan` recorded as its A/B experiment); yields (url, feedback store URL, token)."""
    import socket

    from pipeline.ops import experiments
    from pipeline.storage.feedback import FeedbackStore
    from pipeline.storage.secrets import api_token

    folder = root / "run" / "simulation" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    store_url = f"sqlite:///{folder / 'feedback.db'}"
    scratch = FeedbackStore(store_url)
    if plan is not None:
        experiments.start(scratch, params, plan)
    else:
        experiments.switch(scratch, experiment)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "BOOKREC_FEEDBACK_URL": store_url, "PATH": scripts + os.pathsep + os.environ["PATH"]}
    log = open(folder / "api.log", "wb")  # noqa: SIM115  (closed below, after the process)
    server = subprocess.Popen(
        # its own server: the replay is the only client, as fast as it can ask
        [
            os.path.join(scripts, "bookrec"),
            "serve",
            "--port",
            str(port),
            "--poll-seconds",
            "5",
            "--no-rate-limit",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, folder / "api.log")
        yield url, store_url, api_token(root)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the simulator's API exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the simulator's API did not answer within {seconds:.0f} s; see {log}")
