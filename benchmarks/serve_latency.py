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
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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
    """A recommendation ranked over the whole catalog, one drawn from the reader's standing list (kept
    by the first request), and the bare product, interleaved reader by reader so that the machine's
    drift (these are shared VMs) moves all three alike."""
    import torch

    from pipeline.serving.service import BookRecommender

    torch.set_num_threads(1)
    full = BookRecommender.from_folder(folder)
    standing = BookRecommender(full.bundle)
    standing.keep_standing_lists(100, len(full.users))
    users = full.users["user_id"].sample(n, replace=True, random_state=0).tolist()
    isbns = full.items["isbn"].sample(n, replace=True, random_state=1).tolist()
    for user in users:
        standing.recommend([user], 10)  # the first request ranks in full and keeps the list
    for user in users[:50]:
        full.recommend([user], 10)
    in_full, from_standing, bare = [], [], []
    product = bare_product(full)
    for user in users:
        for model, timings in ((full, in_full), (standing, from_standing)):
            started = time.perf_counter()
            model.recommend([user], 10)
            timings.append(time.perf_counter() - started)
        bare.append(product(user))
    print(f"in-process recommendations ({full.bundle.n_items} items), ranked in full: {percentiles(in_full)}")
    print(f"in-process recommendations from standing lists:              {percentiles(from_standing)}")
    print(f"bare scoring product, one reader (user vector x item matrix): {percentiles(bare)}")
    for label, timings in (("ranked in full", in_full), ("from standing lists", from_standing)):
        print(f"recommend p50 / bare product p50, {label}: {np.median(timings) / np.median(bare):.2f}")
    timings = []
    for isbn in isbns:
        started = time.perf_counter()
        full.similar_books([isbn], 10)
        timings.append(time.perf_counter() - started)
    print(f"in-process similar books: {percentiles(timings)}")


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


WRK_SCRIPT = """
-- one request per call, for a reader drawn at random from the file READERS names
local readers = {}
init = function(args)
  for line in io.lines(os.getenv("READERS")) do readers[#readers + 1] = line end
  math.randomseed(tonumber(os.getenv("SEED")))
end
request = function()
  local reader = readers[math.random(#readers)]
  if os.getenv("KIND") == "mlflow" then
    local body = '{"dataframe_records": [{"user_id": "' .. reader .. '", "k": 10}]}'
    return wrk.format("POST", "/invocations", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/recommendations/" .. reader .. "?k=10")
end
done = function(summary, latency, requests)
  io.write(string.format("@@WRK@@ %d %d %d %f %f %f\\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class Load:
    concurrency: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    peak_rss: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def __str__(self) -> str:
        return (
            f"p50 {self.p50_ms:6.2f} ms   p99 {self.p99_ms:6.2f} ms   {self.per_second:7.1f} req/s   "
            f"(n={self.requests}, errors {self.errors})"
        )


def generate_load(
    url: str, readers: Path, concurrency: int, seconds: float, process: psutil.Process, kind: str = "bookrec"
) -> Load:
    """wrk (one thread, `concurrency` keep-alive connections, a C client whose own cost is small next to
    the server's) for `seconds`: a recommendation for a random reader per request, GET /recommendations
    of bookrec's API or the same question as POST /invocations of `mlflow models serve` (the anchor)."""
    script = readers.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    env = {**os.environ, "READERS": str(readers), "SEED": str(concurrency), "KIND": kind}
    client = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    peak_rss = 0
    while client.poll() is None:
        peak_rss = max(peak_rss, sum(p.memory_info().rss for p in [process, *process.children(True)]))
        time.sleep(0.2)
    line = next(x for x in client.stdout.read().splitlines() if x.startswith("@@WRK@@"))
    requests, micros, errors, p50, p99, _ = line.split()[1:]
    return Load(
        concurrency,
        int(requests),
        int(micros) / 1e6,
        int(errors),
        float(p50) / 1e3,
        float(p99) / 1e3,
        peak_rss,
    )


def mean_batch_size(url: str) -> float:
    """Mean number of requests the server scored together, from its Prometheus metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(("bookrec_rank_batch_size_sum", "bookrec_rank_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("bookrec_rank_batch_size_count", 0.0)
    return values.get("bookrec_rank_batch_size_sum", 0.0) / count if count else 0.0


def wait_for_standing_lists(url: str, timeout: float = 300) -> None:
    """Until the server's standing lists stop growing (its background warm-up is done)."""
    deadline, last = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline:
        now = _metric(url, "bookrec_standing_lists")
        if now == last:
            print(f"standing lists kept by the server: {now:.0f} readers")
            return
        last = now
        time.sleep(3)


def _metric(url: str, name: str) -> float:
    """The sum of every series of one Prometheus metric of the server."""
    lines = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def over_http(root: Path, readers: Path, seconds: float, impressions: bool, scratch: Path) -> dict[int, Load]:
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
    command = [str(BIN / "bookrec"), "serve", "--port", str(port), "--no-rate-limit"]  # throughput
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
        wait_for_standing_lists(url)
        peak, measured = 0, {}
        for concurrency in (1, 8):
            load = generate_load(url, readers, concurrency, seconds, process)
            measured[concurrency] = load
            peak = max(peak, load.peak_rss)
            print(
                f"HTTP recommendations, {label}, concurrency {concurrency}: {load}   "
                f"mean batch so far {mean_batch_size(url):.2f} requests"
            )
        print(f"server peak RSS ({label}): {peak / 2**20:.0f} MiB")
        if impressions:
            time.sleep(2)  # let the writer drain the queue
            from pipeline.storage.feedback import FeedbackStore
            from pipeline.storage.impressions import impressions_frame

            written = len(impressions_frame(FeedbackStore(f"sqlite:///{store}")))
            served = sum(load.requests for load in measured.values())
            print(
                f"impressions: {served} lists served, {written} written, "
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


def mlflow_anchor(root: Path, readers: Path, seconds: float) -> dict[int, Load]:
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
            results[concurrency] = generate_load(url, readers, concurrency, seconds, process, "mlflow")
            print(f"mlflow models serve (anchor), concurrency {concurrency}: {results[concurrency]}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="project whose registry serves")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: <root>/models/ncf)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15, help="seconds of load per concurrency")
    parser.add_argument("--anchor", action="store_true", help="also load `mlflow models serve` on production")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("the HTTP figures need wrk on PATH (Debian: apt-get install wrk)")
    args.model = args.model or args.root / "models" / "ncf"
    in_process(args.model, args.samples)
    from pipeline.storage.bundle import load_bundle

    scratch = args.root / "reports" / "benchmark-serve"
    scratch.mkdir(parents=True, exist_ok=True)
    readers = scratch / "readers.txt"
    readers.write_text("\n".join(load_bundle(args.model).users["user_id"].astype(str)) + "\n")
    results = {}
    for impressions in (False, True):
        results[impressions] = over_http(args.root, readers, args.seconds, impressions, scratch)
    ours = results[True]
    print(f"bookrec p99 at concurrency 8 / p50 at concurrency 1: {ours[8].p99_ms / ours[1].p50_ms:.2f}")
    if args.anchor:
        anchor = mlflow_anchor(args.root, readers, args.seconds)
        print(
            f"requests/s at concurrency 8: bookrec {ours[8].per_second:.1f}, mlflow models serve "
            f"{anchor[8].per_second:.1f} (ratio {ours[8].per_second / anchor[8].per_second:.2f})"
        )


if __name__ == "__main__":
    main()
