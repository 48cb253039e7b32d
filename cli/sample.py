"""`cn-sample`: see what a ControlNet learned.

    cn-sample --base-model sd15 --controlnet out/controlnet --image edges.png --prompt "a house"
    cn-sample --base-model sd15 --controlnet canny_cn --annotator canny --image photo.jpg --batch 4
    cn-sample --base-model sd15 --controlnet a --scale 1.0 --image a.png --controlnet b --scale 0.5 --image b.png
    cn-sample --base-model sd15 --controlnet out/controlnet --dataset ./ds --split train --limit 100 -o samples

Repeating ``--controlnet`` builds a MultiControlNet; ``--scale``, ``--image`` and ``--annotator``
pair with the ControlNets in order (a single value applies to all; ``--annotator none`` skips one).
With ``--dataset`` the conditions and captions of the dataset's rows are sampled instead of images
(``--annotator`` then picks the dataset annotator's condition column), one sample file per row named
after its ``file_name``; ``cn-eval`` then scores them. Every run writes ``manifest.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer

from cli.common import fail

app = typer.Typer(add_completion=False, help="Sample Stable Diffusion with one or more ControlNets.")
Opt = typer.Option
T = TypeVar("T")


def _per_controlnet(values: list[T], count: int, name: str, default: T) -> list[T]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        fail(f"give one {name}, or one per --controlnet ({count}); got {len(values)}")
    return values


@app.command()
def sample_command(
    base_model: Annotated[str, Opt("--base-model", help="diffusers SD 1.x/2.x folder or Hub id")],
    controlnet: Annotated[list[str], Opt("--controlnet", help="ControlNet folder, Hub id or .safetensors (repeatable)")],
    image: Annotated[list[Path] | None, Opt("--image", help="condition image, or raw image with --annotator (repeatable)")] = None,
    scale: Annotated[list[float] | None, Opt("--scale", help="conditioning scale (repeatable)")] = None,
    annotator: Annotated[list[str] | None, Opt("--annotator", help="annotate the image first; with --dataset: the dataset annotator whose condition to use (repeatable)")] = None,
    dataset: Annotated[str | None, Opt(help="sample the conditions and captions of this cn-annotate dataset's rows (folder or Hub id)")] = None,
    split: Annotated[str, Opt(help="dataset split")] = "train",
    limit: Annotated[int | None, Opt(help="sample the first N rows of the split (default: all)")] = None,
    dataset_revision: Annotated[str | None, Opt(help="dataset revision (Hub)")] = None,
    caption_column: Annotated[str, Opt(help="dataset column of the prompts")] = "text",
    prompt: Annotated[str | None, Opt(help="prompt (with --dataset: the same prompt for every row instead of its caption)")] = None,
    negative_prompt: Annotated[str, Opt(help="negative prompt")] = "",
    steps: Annotated[int, Opt(help="sampling steps")] = 20,
    guidance: Annotated[float, Opt(help="classifier-free guidance scale")] = 7.5,
    seed: Annotated[int, Opt(help="seed")] = 0,
    batch: Annotated[int, Opt(help="images to generate")] = 1,
    guess_mode: Annotated[bool, Opt(help="no prompt needed: the paper's 0.825**(12-i) scales")] = False,
    control_start: Annotated[float, Opt(help="fraction of steps where control starts")] = 0.0,
    control_end: Annotated[float, Opt(help="fraction of steps where control ends")] = 1.0,
    only_mid_control: Annotated[bool, Opt(help="the ControlNets were trained with --only-mid-control")] = False,
    width: Annotated[int | None, Opt(help="output width (default: the condition's)")] = None,
    height: Annotated[int | None, Opt(help="output height (default: the condition's)")] = None,
    output_dir: Annotated[Path, Opt("--output-dir", "-o", help="folder for the samples, manifest.jsonl and (images) grid.png")] = Path("samples"),
    revision: Annotated[str | None, Opt(help="base model revision")] = None,
    variant: Annotated[str | None, Opt(help="base model weights variant")] = None,
    device: Annotated[str | None, Opt(help="cuda, cpu, ... (default: cuda when available)")] = None,
    dtype: Annotated[str, Opt(help="auto, float32, float16 or bfloat16")] = "auto",
) -> None:
    import annotators
    from controlnet.sample import ControlNetSpec, SampleConfig, SampleError, sample

    count = len(controlnet)
    scales = _per_controlnet(list(scale or []), count, "--scale", 1.0)
    names: list[str | None] = [None if a == "none" else a for a in _per_controlnet(list(annotator or []), count, "--annotator", "none")]
    for name in names:
        if name is not None and name not in annotators.names():
            fail(str(annotators.UnknownAnnotatorError(name)))
    if dataset is None and not image:
        fail("give --image (one, or one per --controlnet) or --dataset")
    try:
        config = SampleConfig(
            base_model=base_model,
            controlnets=[ControlNetSpec(p, s, a, only_mid_control) for p, s, a in zip(controlnet, scales, names)],
            images=[str(p) for p in image or []], prompt=prompt, negative_prompt=negative_prompt,
            dataset=dataset, split=split, limit=limit, dataset_revision=dataset_revision, caption_column=caption_column,
            output_dir=str(output_dir), revision=revision, variant=variant, steps=steps, guidance=guidance,
            seed=seed, batch=batch, guess_mode=guess_mode, control_start=control_start, control_end=control_end,
            width=width, height=height, device=device, dtype=dtype,
        )
        result = sample(config)
    except (SampleError, FileNotFoundError, OSError, ValueError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    grid = " and grid.png" if result.grid_path else ""
    typer.echo(f"wrote {len(result.paths)} samples, manifest.jsonl{grid} to {output_dir}")


def main() -> None:
    app(prog_name="cn-sample")


if __name__ == "__main__":
    main()
