"""How each stage's wall time and peak memory grow with the data: synthetic Book-Crossing at N times.

    python benchmarks/scale.py [--scales 1,10] [--epoch-scales 100] [--source ../shared/data/book-crossing]
                               [--workdir DIR] [--memory-limit-gib 20] [--out reports]
                               [--keep] [--synthetic-from DIR] [--eval-readers N]

For each scale, in a fresh copy of the project with the default params.yaml: `bookrec data synth
--scale N` (the generator itself is measured too), `bookrec data fetch --source ... --allow-modified`,
the data stages (ingest, preprocess, features), one training epoch without validation
(`benchmarks/train_epoch.py`), then, for `--scales`, every model stage (train, baselines, evaluate,
and `bookrec register`, which registers the model and runs the promotion gate), each in its own
process (wall time, peak RSS and the peak PSS of its process tree, `benchmarks/_measure.py`).
`--epoch-scales` stop after the epoch.
A stage that fails (out of memory under `--memory-limit-gib`, a crash) is recorded with its error and
the rest of that scale is skipped. `--eval-readers` sets evaluate.max_readers; by default the code
chooses the reader sample from the catalog's size (`evaluate.max_scored_pairs`).
Writes `scale.json` (every measurement) and `scale.png` (log-log time and memory against the scale)
into `--out`, and prints each stage's growth exponent: the least-squares slope of log(time) against
log(scale) (1: linear, 2: quadratic).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._measure import measure, measure_epoch  # noqa: E402
from tests.conftest import copy_project  # noqa: E402

DATA_STAGES = ("ingest", "preprocess", "features")
EPOCH = "train epoch"  # one epoch of training alone, no validation: benchmarks/train_epoch.py
MODEL_STAGES = ("train", "baselines", "evaluate", "register")


def limited(gib: float | None):
    """A preexec_fn capping the child's address space, so that a stage out of memory fails alone
    instead of waking the kernel's OOM killer on the whole machine."""
    if not gib:
        return None
    limit = int(gib * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def benchmark_params(project: Path, args) -> None:
    """The copy's params.yaml: the default one, unless `--eval-readers` fixes the evaluation sample."""
    if args.eval_readers is None:
        return
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["evaluate"]["max_readers"] = args.eval_readers
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run_scale(scale: float, everything: bool, args, workdir: Path) -> list[dict]:
    project = copy_project(workdir / f"x{scale:g}")
    benchmark_params(project, args)
    synthetic = workdir / f"synthetic-x{scale:g}"
    steps = [
        (
            "synth",
            ["data", "synth", "--scale", f"{scale:g}", "--out", str(synthetic)]
            + (["--source", str(args.source)] if args.source else []),
        )
    ]
    earlier = args.synthetic_from / synthetic.name if args.synthetic_from else None
    if earlier is not None and (earlier / "synth.json").is_file():
        synthetic, steps = earlier, []  # the same seed and scale: the same files, generated before
    steps.append(("fetch", ["data", "fetch", "--source", str(synthetic), "--allow-modified"]))
    steps += [(stage, [stage]) for stage in DATA_STAGES]
    steps.append((EPOCH, []))
    steps += [(stage, [stage]) for stage in (MODEL_STAGES if everything else ())]
    rows = []
    for name, command in steps:
        # the address-space cap suits the data stages; torch reserves far more address space than it uses
        memory = limited(args.memory_limit_gib if name in DATA_STAGES + ("synth", "fetch") else None)
        try:
            if name == EPOCH:
                result = measure_epoch(project, preexec_fn=memory)
                result["seconds"] = result["epoch_seconds"][0]
            else:
                result = measure(command, project, preexec_fn=memory)
        except RuntimeError as err:
            rows.append({"scale": scale, "stage": name, "error": str(err)[-1500:]})
            print(f"x{scale:g} {name}: FAILED ({str(err).splitlines()[-1][:200]})", flush=True)
            break
        rows.append(
            {
                "scale": scale,
                "stage": name,
                "seconds": result["seconds"],
                "peak_rss_mib": result["peak_rss_mib"],
                "peak_pss_mib": result["peak_pss_mib"],
                **({"epoch": result} if name == EPOCH else {}),
            }
        )
        print(
            f"x{scale:g} {name}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib'] / 1024:.2f} GiB"
            f" (upper bound), peak PSS of its processes {result['peak_pss_mib'] / 1024:.2f} GiB",
            flush=True,
        )
    counts = project / "data" / "processed" / "protocol_report.json"
    if counts.is_file():
        rows.append({"scale": scale, "stage": "protocol_report", "report": json.loads(counts.read_text())})
    if not args.keep and synthetic.parent == workdir:
        shutil.rmtree(synthetic, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    return rows


def exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(value) against log(scale)."""
    if len(points) < 2:
        return None
    xs, ys = zip(*((math.log(s), math.log(max(v, 1e-3))) for s, v in points), strict=True)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else None


def summarise(rows: list[dict]) -> dict:
    stages = [r for r in rows if "seconds" in r]
    names = list(dict.fromkeys(r["stage"] for r in stages))
    summary = {}
    for name in names:
        mine = [r for r in stages if r["stage"] == name]
        summary[name] = {
            "time_exponent": exponent([(r["scale"], r["seconds"]) for r in mine]),
            "memory_exponent": exponent([(r["scale"], r["peak_pss_mib"]) for r in mine]),
        }
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r for r in rows if "seconds" in r]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in dict.fromkeys(r["stage"] for r in stages):
        mine = sorted((r for r in stages if r["stage"] == name), key=lambda r: r["scale"])
        scales = [r["scale"] for r in mine]
        time_axis.plot(scales, [r["seconds"] for r in mine], marker="o", label=name)
        memory_axis.plot(scales, [r["peak_pss_mib"] / 1024 for r in mine], marker="o", label=name)
    for axis, label in (
        (time_axis, "wall time (s)"),
        (memory_axis, "peak PSS of the stage's processes (GiB)"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("data scale (x Book-Crossing)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", default="1,10", help="scales run through every stage")
    parser.add_argument(
        "--epoch-scales", default="100", help="scales run through the data stages and one training epoch"
    )
    parser.add_argument("--source", type=Path, default=None, help="the real data the generator fits")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--memory-limit-gib", type=float, default=20.0)
    parser.add_argument(
        "--eval-readers",
        type=int,
        default=None,
        help="evaluate.max_readers in every run (default: params.yaml)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--keep", action="store_true", help="keep the projects and synthetic files")
    parser.add_argument(
        "--synthetic-from",
        type=Path,
        default=None,
        help="a --workdir kept (--keep) by an earlier run: reuse its synthetic-x<N> files, skip synth",
    )
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",") if s]
    data_scales = [float(s) for s in args.epoch_scales.split(",") if s and float(s) not in scales]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bookrec-scale-"))
    rows: list[dict] = []
    for scale in sorted(scales + data_scales):
        rows += run_scale(scale, scale in scales, args, workdir)
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps({"measurements": rows, "growth": summary}, indent=2))
    plot(rows, args.out / "scale.png")
    print(f"{'stage':<12}{'time exponent':>15}{'memory exponent':>17}")
    for name, growth in summary.items():
        t, m = growth["time_exponent"], growth["memory_exponent"]
        print(f"{name:<12}{'-' if t is None else f'{t:.2f}':>15}{'-' if m is None else f'{m:.2f}':>17}")
    print(f"wrote {args.out / 'scale.json'} and {args.out / 'scale.png'}")


if __name__ == "__main__":
    main()
