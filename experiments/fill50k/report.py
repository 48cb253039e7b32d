"""The experiment's results as a reader sees them: the curves of condition-following against step with
the loss beside them (``curves.png``), samples at several steps (``samples.png``) and a Markdown
table (``table.md``), all written from ``results.json`` and the run's sample folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the points of a run at which the table gives its scores, as fractions of its steps
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: a rise smaller than this (F1 or IoU) is not called a jump
MIN_RISE = 0.1


def key_steps(steps: Sequence[int], fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """The evaluated step nearest to each fraction of the last one."""
    last = steps[-1]
    return [min(steps, key=lambda s, f=f: abs(s - f * last)) for f in fractions]


def jump_step(steps: Sequence[int], values: Sequence[float]) -> int | None:
    """The first evaluated step whose score has covered half the way from step 0 to the end; None
    when the score rose by less than :data:`MIN_RISE`."""
    start, end = values[0], values[-1]
    if end - start < MIN_RISE:
        return None
    half = start + 0.5 * (end - start)
    return next(step for step, value in zip(steps, values) if value >= half)


def largest_rise(steps: Sequence[int], values: Sequence[float]) -> tuple[int, int, float]:
    """The interval between two evaluations with the largest rise, and that rise's share of the
    whole rise (1: all of it in one interval, a sudden change)."""
    rises = np.diff(values)
    index = int(rises.argmax())
    total = values[-1] - values[0]
    return steps[index], steps[index + 1], float(rises[index] / total) if total > 0 else 0.0


def _moving_average(values: Sequence[float], window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("f1", f"edge F1 (canny, tolerance {results['settings']['edge_tolerance']} px)"), ("iou", "circle IoU"))
    for axis, (metric, title) in zip(axes, panels):
        for name, run in runs.items():
            axis.plot(run["curve"]["step"], run["curve"][metric], marker="o", markersize=3, label=name)
        axis.axhline(results["vae_round_trip"][metric], color="grey", linestyle="--", linewidth=1, label="VAE round trip of the target")
        axis.axhline(results["base"]["samples"][metric], color="grey", linestyle=":", linewidth=1, label="base model, no ControlNet")
        axis.set_title(title)
        axis.set_xlabel("ControlNet step")
        axis.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="upper left")
    window = max(1, results["settings"]["eval_every"] // 2)
    for name, run in runs.items():
        smoothed = _moving_average(run["losses"], window)
        axes[2].plot(np.arange(len(smoothed)) + window, smoothed, label=name, linewidth=1)
    axes[2].set_title(f"training loss (moving average of {window} steps)")
    axes[2].set_xlabel("ControlNet step")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _condition_maps(work: Path, count: int) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    from controlnet.dataset.read import load_rows

    rows = load_rows(str(work / "datasets" / "val"))
    names, conditions, targets = [], [], []
    for position in range(min(count, len(rows))):
        row = rows[position]
        names.append(Path(row["file_name"]).name)
        conditions.append(np.asarray(row["conditioning_image"].convert("RGB")))
        targets.append(np.asarray(row["image"].convert("RGB")))
    return names, conditions, targets


def plot_samples(results: dict[str, Any], work: Path, path: Path, columns: int = 6) -> None:
    """Rows: condition, target, base model, then each run at the key steps; columns: validation rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from annotators.image import load_image

    names, conditions, targets = _condition_maps(work, columns)
    rows: list[tuple[str, list[np.ndarray]]] = [("condition", conditions), ("target", targets)]
    rows.append(("base model", [load_image(work / "base-samples" / n) for n in names]))
    for run_name, run in results["runs"].items():
        for step in key_steps(run["curve"]["step"]):
            folder = work / "runs" / run_name / "samples" / f"step-{step:06d}"
            rows.append((f"{run_name}\nstep {step}", [load_image(folder / n) for n in names]))
    figure, axes = plt.subplots(len(rows), len(names), figsize=(1.0 * len(names) + 1.6, 1.0 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            axes[r][c].imshow(image, interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    figure.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def table(results: dict[str, Any]) -> str:
    """Per run: edge F1 and circle IoU at 0, 25, 50, 75 and 100% of the steps, the jump step,
    the empty-prompt F1, step 0 against the base, and the wall time."""
    lines = [
        "| run | metric | " + " | ".join(f"step {s}" for s in key_steps(next(iter(results["runs"].values()))["curve"]["step"])) + " | jump at step | largest rise |",
        "|---|---|" + "---|" * len(FRACTIONS) + "---|---|",
    ]
    for name, run in results["runs"].items():
        curve = run["curve"]
        keys = key_steps(curve["step"])
        for metric, label in (("f1", "edge F1"), ("iou", "circle IoU")):
            values = [curve[metric][curve["step"].index(s)] for s in keys]
            jump = jump_step(curve["step"], curve[metric])
            start, end, share = largest_rise(curve["step"], curve[metric])
            rise = f"{start}→{end} ({share:.0%} of the rise)" if jump is not None else "-"  # no rise: no share of it
            lines.append(f"| {name} | {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {jump if jump is not None else 'no rise'} | {rise} |")
    lines += [
        "",
        "| run | colours right at the end | edge F1 with empty prompts (end) | condition's share of the residuals (end) | step 0 = base model | train time | sampling + scoring time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in results["runs"].items():
        step0 = run["step0"]
        same = "bit-identical" if step0["identical"] else f"no: {step0['pixels_changed']:.0%} of pixels differ, mean |Δ| {step0['mean_abs_difference']:.1f}"
        lines.append(
            f"| {name} | {run['curve']['colour'][-1]['both']:.2f} | {run['final_empty_prompt_f1']:.3f} | {run['probe']['condition_share']:.3g} | {same} "
            f"| {run['train_seconds'] / 60:.1f} min | {run['eval_seconds'] / 60:.1f} min |"
        )
    base = results["base"]["samples"]
    ceiling = results["vae_round_trip"]
    lines += [
        "",
        f"Base model (no ControlNet): colours right {base['colour']['both']:.2f} (background {base['colour']['background']:.2f}, "
        f"circle {base['colour']['circle']:.2f}), edge F1 {base['f1']:.3f}, circle IoU {base['iou']:.3f}. "
        f"VAE round trip of the targets: edge F1 {ceiling['f1']:.3f}, circle IoU {ceiling['iou']:.3f}. "
        f"Whole run: {results['wall_seconds'] / 60:.1f} min wall, {results['cpu_seconds'] / 60:.1f} min CPU, on {results['device']}.",
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], work: Path, report: Path) -> None:
    plot_curves(results, report / "curves.png")
    plot_samples(results, work, report / "samples.png")
    (report / "table.md").write_text(table(results))
