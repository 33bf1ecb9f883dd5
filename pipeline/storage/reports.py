"""Evaluation reports: DVC metrics, plot data and images, cohort slices, and the comparison table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import io
from pipeline.evaluation.evaluate import ModelReport
from pipeline.evaluation.tuning import flat_record

TABLE_METRICS = (
    "ndcg",
    "recall",
    "precision",
    "map",
    "coverage",
    "diversity",
    "personalization",
    "novelty_normalised",
    "long_tail_share",
)


def metrics_document(reports: dict[str, ModelReport]) -> dict:
    """reports/metrics.json: model -> "ndcg@10" style keys, for `dvc metrics show` and diff; a baseline
    tuned on validation adds its chosen values and every grid point's validation NDCG@10."""
    document: dict[str, dict[str, float]] = {}
    for name, report in reports.items():
        flat: dict[str, float] = {}
        for cutoff, values in report.metrics.items():
            for metric, value in values.items():
                flat[f"{metric}{cutoff}"] = round(float(value), 6)
        if report.tuning:
            flat |= {key: round(value, 6) for key, value in flat_record(report.tuning).items()}
        document[name] = flat
    return document


def comparison_table(metrics: dict[str, dict[str, float]], k: int = 10) -> pd.DataFrame:
    rows = {model: {m: values.get(f"{m}@{k}") for m in TABLE_METRICS} for model, values in metrics.items()}
    table = pd.DataFrame(rows).T
    table.index.name = f"model (K={k})"
    return table.sort_values("ndcg", ascending=False)


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(float_format=lambda v: f"{v:.4f}")


def write_reports(reports: dict[str, ModelReport], reports_dir: Path) -> dict:
    document = metrics_document(reports)
    io.write_json(document, reports_dir / "metrics.json")
    io.write_json({name: r.cohorts for name, r in reports.items()}, reports_dir / "cohorts.json")
    io.write_json({name: r.as_dict() for name, r in reports.items()}, reports_dir / "evaluation.json")
    with io.atomic_directory(reports_dir / "plots") as plots:
        for metric in ("ndcg", "recall"):
            wide = pd.DataFrame({"k": next(iter(reports.values())).curve["k"]})
            for name, report in reports.items():
                wide[name] = report.curve[metric].round(6).to_numpy()
            wide.to_csv(plots / f"{metric}_at_k.csv", index=False)
        bias = pd.DataFrame({"popularity_decile": range(1, 11)})
        for name, report in reports.items():
            bias[name] = [round(x, 6) for x in report.popularity_deciles]
        bias.to_csv(plots / "popularity_bias.csv", index=False)
        _draw(plots, reports)
        _draw_accuracy_and_breadth(plots, reports)
    return document


def _draw(folder: Path, reports: dict[str, ModelReport]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, report in reports.items():
        axes[0].plot(report.curve["k"], report.curve["ndcg"], label=name)
        axes[1].plot(report.curve["k"], report.curve["recall"], label=name)
    axes[0].set(title="NDCG@K (test, full ranking)", xlabel="K")
    axes[1].set(title="Recall@K (test, full ranking)", xlabel="K")
    width = 0.8 / max(len(reports), 1)
    for offset, (name, report) in enumerate(reports.items()):
        axes[2].bar(
            [d + offset * width for d in range(1, 11)], report.popularity_deciles, width=width, label=name
        )
    axes[2].set(title="Share of top-10 slots by item popularity decile", xlabel="decile (10 = most popular)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "evaluation.png", dpi=110)
    plt.close(figure)


SERVED = "ncf"  # the model the registry serves, marked in the accuracy-breadth plot


def _draw_accuracy_and_breadth(folder: Path, reports: dict[str, ModelReport]) -> None:
    """Every model's NDCG@10 against its coverage@10 and its normalised novelty@10: the trade-off the
    project was founded on, one point per model, the served one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, breadth, label in (
        (axes[0], "coverage", "catalog coverage@10"),
        (axes[1], "novelty_normalised", "normalised novelty@10"),
    ):
        for name, report in reports.items():
            at10 = report.metrics.get("@10", {})
            if "ndcg" not in at10 or breadth not in at10:
                continue
            served = name == SERVED
            axis.scatter(at10[breadth], at10["ndcg"], s=70 if served else 30, marker="*" if served else "o")
            axis.annotate(
                name, (at10[breadth], at10["ndcg"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        axis.set(title=f"NDCG@10 against {label} (test)", xlabel=label, ylabel="NDCG@10")
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / "accuracy_breadth.png", dpi=110)
    plt.close(figure)
