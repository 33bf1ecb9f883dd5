"""Serving latency over the full catalog: in process (BookRecommender) and over HTTP on loopback.

    python benchmarks/serve_latency.py [--root .] [--model models/ncf] [--requests 10000] [--anchor]

In process: p50/p99 of one reader's recommendations and of one book's similar books. Over HTTP: the
real `bookrec serve` on 127.0.0.1 at concurrency 1 and 8 with a bounded number of requests: p50/p99,
requests per second, errors, and the server's peak RSS; once with impression logging off and once
on (over a scratch feedback store), with how many impressions were written and dropped. In process
also the bare scoring product for one reader and the ratio of a recommendation's p50 to it; with
`--anchor`, `mlflow models serve` on the registry's production model under the same load, and the
ratios of requests per second and of p99 at concurrency 8 to p50 at concurrency 1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms   p99 {np.percentile(ms, 99):6.2f} ms   (n={len(ms)})"


def in_process(folder: Path, n: int) -> None:
    import torch

    from pipeline.serving.service import BookRecommender

    torch.set_num_threads(1)
    model = BookRecommender.from_folder(folder)
    users = model.users["user_id"].sample(n, replace=True, random_state=0).tolist()
    isbns = model.items["isbn"].sample(n, replace=True, random_state=1).tolist()
    for user in users[:50]:
        model.recommend([user], 10)
    # Interleaved, reader by reader: a recommendation, then the bare product for the same reader, so
    # that the machine's drift (these are shared VMs) moves both alike.
    timings, bare = [], []
    product = bare_product(model)
    for user in users:
        started = time.perf_counter()
        model.recommend([user], 10)
        timings.append(time.perf_counter() - started)
        bare.append(product(user))
    print(f"in-process recommendations ({model.bundle.n_items} items): {percentiles(timings)}")
    ratio = np.percentile(timings, 50) / np.percentile(bare, 50)
    print(f"bare scoring product, one reader (user vector x item matrix): {percentiles(bare)}")
    print(f"recommend p50 / bare product p50: {ratio:.2f}")
    timings = []
    for isbn in isbns:
        started = time.perf_counter()
        model.similar_books([isbn], 10)
        timings.append(time.perf_counter() - started)
    print(f"in-process similar books:                  {percentiles(timings)}")


def bare_product(model):
    """The arithmetic floor of one recommendation: one reader's GMF vector times the item matrix
    (float32, the served model's own cache), nothing else; a function timing it for a reader."""
    import torch

    engine = model.engines["all"]
    cache = engine.item_cache()

    def timed(user: str) -> float:
        row = np.array([model.user_index[str(user)]])
        with torch.inference_mode():
            vector = engine.model.user_vectors(
                torch.from_numpy(row),
                engine.user_features[row],
                engine.model.history_terms(engine.history[row]),
            ).gmf
            started = time.perf_counter()
            vector @ cache.gmf_weighted
            return time.perf_counter() - started

    return timed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client(args: tuple[str, int, list[str], int, str]) -> tuple[list[float], int]:
    """One client process: `count` sequential requests on one keep-alive connection: GET
    /recommendations of bookrec's API, or the same question as POST /invocations of `mlflow models
    serve` (the anchor)."""
    import http.client
    import json

    host_port, offset, users, count, kind = args
    host, port = host_port.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    timings, errors = [], 0
    for i in range(count):
        user = users[(offset * count + i) % len(users)]
        started = time.perf_counter()
        if kind == "mlflow":
            body = json.dumps({"dataframe_records": [{"user_id": user, "k": 10}]})
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        else:
            connection.request("GET", f"/recommendations/{user}?k=10")
        response = connection.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        errors += response.status != 200
    connection.close()
    return timings, errors


def generate_load(
    url: str, users: list[str], concurrency: int, total: int, process: psutil.Process, kind: str = "bookrec"
):
    """`total` GET /recommendations from `concurrency` client processes (separate processes, so that
    the clients do not queue behind one another on a GIL); timings, errors, seconds, peak RSS."""
    from multiprocessing import get_context

    host_port = url.removeprefix("http://")
    per_client = total // concurrency
    peak_rss = 0
    with get_context("spawn").Pool(concurrency) as pool:
        started = time.perf_counter()
        pending = pool.map_async(
            _client, [(host_port, c, users, per_client, kind) for c in range(concurrency)]
        )
        while not pending.ready():
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in [process, *process.children(True)]))
            pending.wait(0.2)
        elapsed = time.perf_counter() - started
        results = pending.get()
    timings = [t for local, _ in results for t in local]
    return timings, sum(errors for _, errors in results), elapsed, peak_rss


def mean_batch_size(url: str) -> float:
    """Mean number of requests the server scored together, from its Prometheus metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(("bookrec_rank_batch_size_sum", "bookrec_rank_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("bookrec_rank_batch_size_count", 0.0)
    return values.get("bookrec_rank_batch_size_sum", 0.0) / count if count else 0.0


def _metric(url: str, name: str) -> float:
    """The sum of every series of one Prometheus metric of the server."""
    lines = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def over_http(root: Path, users: list[str], total: int, impressions: bool, scratch: Path) -> None:
    """The real server, over a scratch feedback store (the benchmark's impressions never reach the
    project's), with impression logging on or off."""
    port = free_port()
    store = scratch / f"feedback-{'on' if impressions else 'off'}.db"
    store.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BOOKREC_FEEDBACK_URL": f"sqlite:///{store}",
    }
    command = [str(BIN / "bookrec"), "serve", "--port", str(port)]
    server = subprocess.Popen(
        command + ([] if impressions else ["--no-impressions"]),
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    label = f"impression logging {'on' if impressions else 'off'}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        process = psutil.Process(server.pid)
        peak, measured = 0, {}
        for concurrency in (1, 8):
            timings, errors, elapsed, rss = generate_load(url, users, concurrency, total, process)
            measured[concurrency] = (timings, len(timings) / elapsed)
            peak = max(peak, rss)
            batched = mean_batch_size(url)
            print(
                f"HTTP recommendations, {label}, concurrency {concurrency}: {percentiles(timings)}   "
                f"{len(timings) / elapsed:7.1f} req/s   errors {errors}   "
                f"mean batch so far {batched:.2f} requests"
            )
        print(f"server peak RSS ({label}): {peak / 2**20:.0f} MiB")
        if impressions:
            time.sleep(2)  # let the writer drain the queue
            from pipeline.storage.feedback import FeedbackStore
            from pipeline.storage.impressions import impressions_frame

            written = len(impressions_frame(FeedbackStore(f"sqlite:///{store}")))
            print(
                f"impressions: {2 * total} lists served, {written} written, "
                f"{_metric(url, 'bookrec_impressions_dropped_total'):.0f} dropped (queue full)"
            )
        return measured
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_up(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def mlflow_anchor(root: Path, users: list[str], total: int) -> dict[int, tuple]:
    """`mlflow models serve` on the registry's production model (what a user would otherwise pick),
    loaded like bookrec's API: p50/p99 and requests per second at concurrency 1 and 8."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
    }
    command = ["mlflow", "models", "serve", "-m", "models:/bookrec-ncf@production", "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    results = {}
    try:
        wait_until_up(f"{url}/ping")
        process = psutil.Process(server.pid)
        for concurrency in (1, 8):
            timings, errors, elapsed, _ = generate_load(url, users, concurrency, total, process, "mlflow")
            results[concurrency] = (timings, len(timings) / elapsed)
            print(
                f"mlflow models serve (anchor), concurrency {concurrency}: {percentiles(timings)}   "
                f"{len(timings) / elapsed:7.1f} req/s   errors {errors}"
            )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="project whose registry serves")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: <root>/models/ncf)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--anchor", action="store_true", help="also load `mlflow models serve` on production")
    parser.add_argument("--anchor-requests", type=int, default=1000)
    args = parser.parse_args()
    args.model = args.model or args.root / "models" / "ncf"
    in_process(args.model, args.samples)
    from pipeline.storage.bundle import load_bundle

    users = load_bundle(args.model).users["user_id"].astype(str).tolist()
    scratch = args.root / "reports" / "benchmark-serve"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {}
    for impressions in (False, True):
        results[impressions] = over_http(args.root, users, args.requests, impressions, scratch)
    if args.anchor:
        anchor = mlflow_anchor(args.root, users, args.anchor_requests)
        ours = results[True]
        print(
            f"requests/s at concurrency 8: bookrec {ours[8][1]:.1f}, mlflow models serve {anchor[8][1]:.1f} "
            f"(ratio {ours[8][1] / anchor[8][1]:.2f}); bookrec p99 at concurrency 8 / p50 at concurrency 1: "
            f"{np.percentile(ours[8][0], 99) / np.percentile(ours[1][0], 50):.2f}"
        )


if __name__ == "__main__":
    main()
