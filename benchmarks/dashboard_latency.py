"""Dashboard latency against the registry's production model (needs `make up` or a registered model).

    python benchmarks/dashboard_latency.py [--repeats 30]

Measured with Streamlit's AppTest, which runs the page scripts exactly as the server does (without
the browser's paint): the first page load with the model already loaded, then each recommendation
and similar-books request as the script rerun it causes.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def summary(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return (
        f"p50 {np.percentile(ms, 50):7.1f} ms   p99 {np.percentile(ms, 99):7.1f} ms   max {ms.max():7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("BOOKREC_ROOT", str(ROOT))
    os.chdir(ROOT / "dashboard")
    from streamlit.testing.v1 import AppTest

    app_file = str(ROOT / "dashboard" / "app.py")
    started = time.perf_counter()
    AppTest.from_file(app_file, default_timeout=300).run()
    print(f"model load from the registry + first render: {time.perf_counter() - started:.2f} s")

    started = time.perf_counter()
    app = AppTest.from_file(app_file, default_timeout=60).run()
    print(f"first page load, model already loaded:       {time.perf_counter() - started:.2f} s")

    examples = app.selectbox[0].options[1:]
    timings = []
    for i in range(args.repeats):
        started = time.perf_counter()
        app.selectbox[0].select(examples[i % len(examples)]).run()
        timings.append(time.perf_counter() - started)
        assert not app.exception, app.exception
    print(f"reader recommendations (top 10, covers, reasons): {summary(timings)}")

    app.switch_page("pages/similar.py").run()
    queries = ["harry potter", "grisham", "stephen king", "tolkien", "austen", "christie"]
    timings = []
    for i in range(args.repeats):
        started = time.perf_counter()
        app.text_input[0].input(queries[i % len(queries)] + " " * (i // len(queries))).run()
        timings.append(time.perf_counter() - started)
        assert not app.exception, app.exception
    print(f"similar books (search + top 10):                  {summary(timings)}")


if __name__ == "__main__":
    main()
