"""`cn-eval`: how well generated images follow their condition.

    cn-sample --base-model sd15 --controlnet out/controlnet --dataset ./ds --split train --limit 200 -o samples
    cn-eval --dataset ./ds --samples samples --output report.json

Each sample is re-annotated with the annotator and parameters that made its condition (from the
dataset's build.json) and scored for its kind of condition: F1 for edges, SSIM / MS-SSIM / PSNR for
soft edges and line art, RMSE for depth, angular error for normals, mIoU for label maps, PCK and
OKS for poses. Writes REPORT.json, REPORT.md and REPORT-worst.png (condition | sample |
re-annotation of the worst-following samples). Options are generated from EvalConfig.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.common import EXIT_USAGE, err_console, fail
from cli.options import config_parameters, given_values

__all__ = ["app", "main"]


def eval_command(**options: Any) -> None:
    """Score how well generated images follow their conditions."""
    from controlnet.evaluation import EvalConfig, EvalError, evaluate

    try:
        config = EvalConfig(samples=options["samples"], output=options["output"], **given_values(EvalConfig, options))
    except ValueError as err:
        fail(str(err), EXIT_USAGE)
    try:
        result = evaluate(config, progress=_progress())
    except EvalError as err:
        fail(str(err))
    report = result.report
    counts = report["counts"]
    table = Table(title=f"{report['annotator']['id']}: {counts['scored']} of {counts['samples']} samples scored")
    for column in ("metric", "mean", f"{round(config.confidence * 100)}% CI", "better"):
        table.add_column(column)
    for name, values in report["metrics"].items():
        ci = values["ci"]
        table.add_row(
            name,
            "–" if values["mean"] is None else f"{values['mean']:.4g}",
            f"{ci[0]:.4g} – {ci[1]:.4g}" if ci else "–",
            "higher" if values["higher_is_better"] else "lower",
        )
    Console().print(table)
    for note in report["notes"]:
        err_console.print(f"[yellow]note:[/] {note}")
    written = [result.json_path.name, result.markdown_path.name] + ([result.sheet_path.name] if result.sheet_path else [])
    Console().print(f"wrote {', '.join(written)}")


def _progress() -> Any:
    last = [-1]

    def report(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if percent // 10 != last[0] // 10:
            err_console.print(f"scored {done} of {total} samples")
            last[0] = percent

    return report


def _signature() -> inspect.Signature:
    from controlnet.evaluation import EvalConfig

    keyword = inspect.Parameter.KEYWORD_ONLY
    required = [
        inspect.Parameter("samples", keyword, annotation=Annotated[Path, typer.Option("--samples", help="folder of generated images: written by cn-sample (manifest.jsonl), or named by the rows' file_name")]),
        inspect.Parameter("output", keyword, annotation=Annotated[Path, typer.Option("--output", "-o", help="the JSON report; REPORT.md and REPORT-worst.png are written next to it")]),
    ]
    return inspect.Signature(required + config_parameters(EvalConfig))


eval_command.__signature__ = _signature()  # type: ignore[attr-defined]
app = typer.Typer(add_completion=False, help="Score how well generated images follow their ControlNet conditions.")
app.command()(eval_command)


def main() -> None:
    app(prog_name="cn-eval")


if __name__ == "__main__":
    main()
