"""Judge precision schedules by the images they make: ``mixdiff eval``.

Every schedule generates the same prompts with the same seeds; the shapes yardstick
reads each image (prompt accuracy, and whether it reads as the FP32 image of its seed and
prompt does: reading agreement), compares the set with real images of the same
prompts (Fréchet distance on its features), and each image is compared with the FP32
image of its seed and prompt (PSNR, SSIM). The FP32 schedule always runs: it is the
reference, and the first row.

Schedules are written as a precision name (``fp32``, ``bf16``, ``int8``) or in the
split form ``HIGH/LOW:FIRST:LAST`` (``bf16/int8:5:5``: bf16 for the first and last 5
steps, int8 between), and listed comma-separated.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.engine.schedule import PrecisionSpec, SplitSchedule, describe, precisions_named, resolve
from app.errors import InvalidRequest
from app.settings import REPO_ROOT

#: The yardstick classifier shipped with the embedded model.
DEFAULT_YARDSTICK = REPO_ROOT / "models" / "shapes-yardstick"
REFERENCE = "fp32"
#: Columns of the accuracy table, in the order a caption names them.
ATTRIBUTES = ("shape", "color", "size", "position", "background")


def parse_schedules(text: str) -> list[tuple[str, PrecisionSpec]]:
    """``"fp32,bf16,bf16/int8:5:5"`` -> ``[(label, spec), ...]``, the FP32 reference first."""
    specs: list[tuple[str, PrecisionSpec]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "/" in item:
            try:
                pair, first, last = item.split(":")
                high, low = pair.split("/")
                spec: PrecisionSpec = SplitSchedule(high=high, low=low, first=int(first), last=int(last))
            except ValueError:
                raise InvalidRequest(
                    f"schedule {item!r} is not HIGH/LOW:FIRST:LAST (e.g. bf16/int8:5:5)", param="schedules"
                ) from None
        else:
            spec = item
        if item not in (label for label, _ in specs):
            specs.append((item, spec))
    specs = [(label, spec) for label, spec in specs if label != REFERENCE]
    return [(REFERENCE, REFERENCE)] + specs


def precisions_of(specs: list[tuple[str, PrecisionSpec]]) -> list[str]:
    """Every UNet variant the schedules need."""
    return sorted(set().union(*(precisions_named(spec) for _, spec in specs)))


@dataclass
class Row:
    schedule: str
    steps: str  # the resolved schedule, compact: "bf16×5 int8×40 bf16×5"
    accuracy: dict[str, float]  # per attribute and "overall"
    agreement: float | None  # share of images read exactly as their FP32 image; None for the FP32 row
    frechet: float
    psnr_db: float | None  # mean over images vs the FP32 image; None for the FP32 row
    ssim: float | None  # mean over images
    seconds_per_image: float
    ssim_median: float | None = None  # the typical image, which a few whose composition flips do not move
    ssim_per_image: list[float] | None = None  # in prompt order: rows compared image by image


@dataclass
class Report:
    model: str
    n: int
    steps: list[int]
    guidance_scale: float
    scheduler: str
    seed: int
    prompt_seed: int
    decoder: str = "full"
    reference: str | None = None  # what the first row is, where it was made elsewhere
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        seen = {a for row in self.rows for a in row.accuracy}
        attributes = [a for a in ATTRIBUTES if a in seen]
        head = ["schedule", "steps", "overall", *attributes, "read as FP32", "Fréchet", "PSNR dB"]
        head += ["SSIM", "SSIM median", "s/image"]
        lines = [
            f"Model `{self.model}`: {self.n} prompts, {', '.join(map(str, self.steps))} steps of {self.scheduler}, "
            f"guidance {self.guidance_scale}, {self.decoder} decoder, seeds {self.seed}..{self.seed + self.n - 1}, "
            f"prompt seed {self.prompt_seed}."
            + (f" Compared with {self.reference}." if self.reference else ""),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for row in self.rows:
            cells = [
                row.schedule,
                row.steps,
                f"{row.accuracy['overall']:.1%}",
                *(f"{row.accuracy[a]:.1%}" if a in row.accuracy else "–" for a in attributes),
                "ref" if row.agreement is None else f"{row.agreement:.1%}",
                f"{row.frechet:.2f}",
                "ref" if row.psnr_db is None else f"{row.psnr_db:.2f}",
                "ref" if row.ssim is None else f"{row.ssim:.4f}",
                "ref" if row.ssim_median is None else f"{row.ssim_median:.4f}",
                f"{row.seconds_per_image:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


@dataclass
class Reference:
    """Images the rows are compared with, made elsewhere: a teacher's FP32 images, for a
    distilled student's schedules."""

    label: str  # its row's label, e.g. "teacher fp32"
    steps: str  # how it was made, for its row
    images: np.ndarray
    seconds_per_image: float


def generate_set(pipeline, schedule: list[str], prompts, *, seed: int, on_image=None, label: str = "", **params):
    """``pipeline``'s images of ``prompts`` (seed ``seed + i`` each) under ``schedule``, as one
    uint8 array, and the seconds per image; ``params``: the rest of ``GenerationParams``."""
    from app.pipeline.types import GenerationParams

    size = pipeline.info.default_size
    generated, start = [], time.perf_counter()
    for i, prompt in enumerate(prompts):
        request = GenerationParams(prompt=prompt.text, width=size, height=size, seed=seed + i, **params)
        result = pipeline.generate(request, schedule)
        generated.append(np.asarray(Image.open(io.BytesIO(result.images[0])).convert("RGB")))
        if on_image is not None:
            on_image(label, i)
    return np.stack(generated), (time.perf_counter() - start) / len(prompts)


def evaluate(
    pipeline,
    specs: list[tuple[str, PrecisionSpec]],
    *,
    n: int,
    steps: int | list[int],
    guidance_scale: float,
    scheduler: str,
    decoder: str = "full",
    seed: int = 0,
    prompt_seed: int = 1000,
    yardstick_dir: str | Path = DEFAULT_YARDSTICK,
    reference: Reference | None = None,
    on_image=None,
) -> tuple[Report, dict[str, np.ndarray]]:
    """Run every schedule on the same ``n`` prompts and seeds; the report and each schedule's images.

    ``pipeline`` is an ``app.pipeline.loop.MixedPrecisionPipeline``; ``on_image(label, i)`` is
    called after each image (progress). Every row is compared with ``reference``'s images
    where given (then ``steps`` may list several step counts, each schedule running at
    each), else with the FP32 schedule's.
    """
    from shapes import dataset, metrics, yardstick

    if n < 2:
        raise InvalidRequest(f"n must be at least 2 (the Fréchet distance needs two images), got {n}", param="n")
    step_counts = [steps] if isinstance(steps, int) else list(steps)
    if reference is None and len(step_counts) > 1:
        raise InvalidRequest(
            "several step counts need a reference made elsewhere (a teacher's images: --reference-model)",
            param="steps",
        )
    classifier = yardstick.load(yardstick_dir)
    prompts = dataset.prompts(n, prompt_seed)
    real = np.stack([dataset.render(dataset.scene(i, prompt_seed, two_object_share=0.0)) for i in range(n)])
    real_features = yardstick.features(classifier, real)
    report = Report(pipeline.info.name, n, step_counts, guidance_scale, scheduler, seed, prompt_seed, decoder)
    images: dict[str, np.ndarray] = {}
    readings: dict[str, dict[str, list[str]]] = {}

    def add_row(label: str, steps_text: str, batch: np.ndarray, seconds: float, is_reference: bool) -> None:
        images[label], readings[label] = batch, yardstick.read(classifier, batch)
        ref = next(iter(images))  # the first row is the reference
        ssims = None if is_reference else [metrics.ssim(a, b) for a, b in zip(batch, images[ref])]
        report.rows.append(
            Row(
                schedule=label,
                steps=steps_text,
                accuracy=metrics.prompt_accuracy([p.named for p in prompts], readings[label]),
                agreement=None if is_reference else metrics.reading_agreement(readings[label], readings[ref]),
                frechet=metrics.frechet_distance(yardstick.features(classifier, batch), real_features),
                psnr_db=None if is_reference else _mean([metrics.psnr(a, b) for a, b in zip(batch, images[ref])]),
                ssim=None if is_reference else _mean(ssims),
                seconds_per_image=seconds,
                ssim_median=None if is_reference else float(np.median(ssims)),
                ssim_per_image=ssims,
            )
        )

    if reference is not None:
        report.reference = f"{reference.label}: {reference.steps}"
        add_row(reference.label, reference.steps, reference.images, reference.seconds_per_image, True)
    for count in step_counts:
        for label, spec in specs:
            schedule = resolve(spec, count, pipeline.precisions)
            row_label = label if len(step_counts) == 1 else f"{label} @{count}"
            batch, seconds = generate_set(
                pipeline, schedule, prompts, seed=seed, on_image=on_image, label=row_label,
                steps=count, guidance_scale=guidance_scale, scheduler=scheduler, decoder=decoder,
            )  # fmt: skip
            add_row(row_label, describe(schedule), batch, seconds, reference is None and label == REFERENCE)
    return report, images


def _mean(values: list[float]) -> float:
    """Mean, where identical images (PSNR inf) count as 100 dB so one of them does not make the mean inf."""
    return float(np.mean(np.minimum(values, 100.0)))


def sample_grid(images: np.ndarray, captions: list[str], columns: int = 4, scale: int = 3) -> Image.Image:
    """The images, ``scale`` times larger, in a grid with each caption written under its image."""
    cell = images.shape[1] * scale
    text_height = 34
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, text) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        grid.paste(Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 3, y + cell + 2), _wrap(text, cell // 6), fill="black", spacing=1)
    return grid


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
