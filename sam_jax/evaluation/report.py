"""Aggregated results and their reports: results.json, results.md and a plot.

IoUs in results.json and records.jsonl are fractions in [0, 1]; results.md shows percent
like the paper. Files are replaced atomically (written to a temporary file in the same
folder, then renamed), so a reader or a crash never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from sam_jax.evaluation import registry


def write_atomic(path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dataset_summary(
    ious: list[list[float]],
    oracle_ious: list[list[float]],
    num_clicks: tuple[int, ...],
    num_images: int,
    skipped: int,
    problems: list[str],
    first_outputs: list | None = None,
) -> dict:
    """One dataset's entry of results.json. ious: per mask, the IoU after 1..K clicks;
    first_outputs: per mask, (actual IoUs, predicted IoUs) of the first click's outputs,
    summarised by `first_click_summary` under "first_click"."""
    out = {"miou": {}, "oracle_miou": {}}
    if ious:
        a, o = np.asarray(ious), np.asarray(oracle_ious)
        for n in num_clicks:
            out["miou"][str(n)] = float(a[:, n - 1].mean())
            out["oracle_miou"][str(n)] = float(o[:, n - 1].mean())
    if first_outputs:
        out["first_click"] = first_click_summary(first_outputs)
    out["num_masks"] = len(ious)
    out["num_images"] = num_images
    out["skipped"] = skipped
    out["problems"] = problems[:20]
    return out


def first_click_summary(first_outputs: list) -> dict:
    """How the first click's outputs and the IoU head did, over masks given as (actual IoUs,
    predicted IoUs) pairs of equal length M (3 with multimask output):

    output_miou (M,): mean IoU of each output; output_best (M,): the share of masks on
    which each output is the best (ties split evenly); head_pick (M,): how often the head
    picks each; head_top1: how often the head's pick is a best output (ties count as
    right); head_abs_err: mean |predicted - actual| IoU over all outputs; first_output_miou
    and picked_miou / oracle_miou: always output 0, the head's pick, the best of them.
    """
    actual = np.asarray([a for a, _ in first_outputs], np.float64)
    pred = np.asarray([p for _, p in first_outputs], np.float64)
    rows = np.arange(len(actual))
    pick = pred.argmax(1)
    oracle = actual.max(1)
    is_best = actual >= oracle[:, None] - 1e-9
    m = actual.shape[1]
    return {
        "num_masks": len(actual),
        "output_miou": actual.mean(0).tolist(),
        "output_best": (is_best / is_best.sum(1, keepdims=True)).mean(0).tolist(),
        "head_pick": (np.bincount(pick, minlength=m) / len(pick)).tolist(),
        "head_top1": float(is_best[rows, pick].mean()),
        "head_abs_err": float(np.abs(pred - actual).mean()),
        "first_output_miou": float(actual[:, 0].mean()),
        "picked_miou": float(actual[rows, pick].mean()),
        "oracle_miou": float(oracle.mean()),
    }


def mean_over_datasets(datasets: dict, num_clicks: tuple[int, ...]) -> dict:
    """Unweighted mean of the per-dataset mIoUs, as the paper averages its 23 datasets."""
    scored = [d for d in datasets.values() if d["num_masks"] > 0]
    out = {"miou": {}, "oracle_miou": {}, "num_datasets": len(scored)}
    for n in num_clicks:
        k = str(n)
        if scored:
            out["miou"][k] = float(np.mean([d["miou"][k] for d in scored]))
            out["oracle_miou"][k] = float(np.mean([d["oracle_miou"][k] for d in scored]))
    return out


def covers_paper_suite(datasets: dict) -> bool:
    """Whether the run scored exactly the paper's 23 datasets: the only case in which its
    mean over datasets is comparable to the paper's mean (`registry.PAPER_MEAN_MIOU`)."""
    scored = [name for name, d in datasets.items() if d["num_masks"] > 0]
    specs = [registry.lookup(name) for name in scored]
    if any(spec is None for spec in specs):
        return False
    return sorted(spec.name for spec in specs) == sorted(registry.DATASETS)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown(results: dict, num_clicks: tuple[int, ...]) -> str:
    """A table per dataset beside the paper's SAM-minus-RITM delta at one click."""
    ks = [str(n) for n in num_clicks]
    head = (
        ["dataset", "masks", "skipped"]
        + [f"mIoU@{k}" for k in ks]
        + ["oracle@1", "paper SAM-RITM @1"]
    )
    lines = [
        "# Zero-shot interactive segmentation",
        "",
        "mIoU (%) of the most confident mask after N clicks (paper protocol: first click at "
        "the mask's centre, each next one at the centre of the largest error). `oracle@1`: "
        "best of the three masks at one click. The last column is the paper's SAM minus "
        "RITM mIoU at one click (Fig. 9a) for reference; the paper gives no per-dataset "
        "absolute SAM numbers.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, d in results["datasets"].items():
        spec = registry.lookup(name)
        delta = f"{spec.paper_delta:+.1f}" if spec and spec.paper_delta is not None else ""
        row = [name, str(d["num_masks"]), str(d["skipped"])]
        row += [_pct(d["miou"].get(k)) for k in ks]
        row += [_pct(d["oracle_miou"].get("1")), delta]
        lines.append("| " + " | ".join(row) + " |")
    mean = results["mean_over_datasets"]
    row = [f"**mean of {mean['num_datasets']}**", "", ""]
    row += [_pct(mean["miou"].get(k)) for k in ks]
    row += [_pct(mean["oracle_miou"].get("1")), ""]
    lines.append("| " + " | ".join(row) + " |")
    if covers_paper_suite(results["datasets"]):
        paper = ["paper, SAM ViT-H, mean of 23", "", ""]
        paper += [
            f"{registry.PAPER_MEAN_MIOU[int(k)]:.1f}" if int(k) in registry.PAPER_MEAN_MIOU else "-"
            for k in ks
        ]
        paper += ["", ""]
        lines.append("| " + " | ".join(paper) + " |")
    else:
        in_suite = sum(
            1 for n, d in results["datasets"].items() if d["num_masks"] and registry.lookup(n)
        )
        lines += [
            "",
            f"The paper's mean over its 23 datasets is not shown: this run's mean is over "
            f"{mean['num_datasets']} dataset(s), {in_suite} of them from the paper's suite, so "
            "the two are not comparable.",
        ]
    ranked = {n: d["first_click"] for n, d in results["datasets"].items() if "first_click" in d}
    if ranked:
        lines += [
            "",
            "First click, per output (%): mIoU, the share of masks on which it is the best, "
            "the share the IoU head picks it; the head's top-1 accuracy (its pick is a best "
            "output) and its mean |predicted - actual| IoU.",
            "",
            "| dataset | output mIoU | best | head picks | head top-1 | abs. error |",
            "|---|---|---|---|---|---|",
        ]
        for name, f in ranked.items():

            def pcts(xs):
                return " / ".join(_pct(x) for x in xs)

            row = [name, pcts(f["output_miou"]), pcts(f["output_best"]), pcts(f["head_pick"])]
            row += [_pct(f["head_top1"]), _pct(f["head_abs_err"])]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, num_clicks: tuple[int, ...], path) -> None:
    """mIoU against the number of clicks, one line per dataset (and the mean)."""
    # A bare Figure draws with Agg without touching pyplot's global backend, so a notebook
    # that runs an evaluation keeps showing its own figures inline.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    xs = list(num_clicks)
    for name, d in results["datasets"].items():
        if d["num_masks"]:
            ax.plot(xs, [100 * d["miou"][str(n)] for n in xs], marker="o", lw=1, label=name)
    mean = results["mean_over_datasets"]
    if mean["num_datasets"] > 1:
        ax.plot(xs, [100 * mean["miou"][str(n)] for n in xs], "k-", lw=3, marker="s", label="mean")
    paper = [(n, v) for n, v in registry.PAPER_MEAN_MIOU.items() if n in xs]
    if paper and covers_paper_suite(results["datasets"]):  # else not comparable
        ax.plot(*zip(*paper), "k*", ms=12, ls="none", label="paper mean (SAM ViT-H)")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(xs)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2)
