"""Cold start of the dashboard as a visitor sees it: a fresh `streamlit run` process, headless Chromium.

    python benchmarks/dashboard_cold_start.py [--root PATH] [--code CHECKOUT] [--repeats 3]

`--root` holds the registry with a `production` model; `--code` is the checkout whose dashboard runs
(default: this one; another worktree measures the code before a change in the same run).

For each repeat: starts the server, waits until its health endpoint answers, opens the first page and
times (from the page request) until the sidebar names the model and the reader form is there, and until
the model has loaded (the sidebar shows the production version and the example readers are offered).
Also prints the time from process start. Needs Debian's chromium (`make test` installs it as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import free_port  # noqa: E402  (the same loopback port helper as the tests)


def one_cold_start(root: Path, code: Path, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {
        **os.environ,
        "BOOKREC_ROOT": str(root),
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "streamlit"), "run", str(code / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        env=env | {"PYTHONPATH": str(code)}, cwd=code / "dashboard", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        healthy = time.perf_counter()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            requested = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="commit")
            page.get_by_label("Book-Crossing User-ID").wait_for(timeout=120_000)
            page.locator("[data-testid=stSidebar]").get_by_text("bookrec-ncf").first.wait_for(timeout=120_000)
            form = time.perf_counter()
            page.locator("[data-testid=stSidebar]").get_by_text("(production)").first.wait_for(
                timeout=300_000
            )
            page.get_by_text("NDCG@10").first.wait_for(timeout=300_000)
            loaded = time.perf_counter()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "server start to health": healthy - started,
        "request to sidebar + form": form - requested,
        "request to model loaded": loaded - requested,
        "process start to sidebar + form": form - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    runs = [one_cold_start(args.root.resolve(), args.code.resolve(), chromium) for _ in range(args.repeats)]
    for key in runs[0]:
        values = ", ".join(f"{run[key]:.2f}" for run in runs)
        print(f"{key:<34} {values} s")


if __name__ == "__main__":
    main()
