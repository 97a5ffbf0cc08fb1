"""The plots of docs/QUANTIZATION.md and docs/FEW_STEPS.md: QAT loss curves, image fidelity by
schedule, and a few-step model's fidelity by step count.

    python -m shapes.plots --loss qat=runs/qat/int8-qat/loss.jsonl \\
        --eval runs/eval-qat/eval.json --out docs/
    python -m shapes.plots --few-steps runs/eval-lcm/eval.json --few-steps runs/eval-teacher-few/eval.json

writes ``qat-loss.png`` (each run's distillation loss, the student's output against the
FP32 teacher's, and its denoising loss, smoothed over ``--window`` steps),
``fidelity-by-schedule.png`` (1 − SSIM against the FP32 image of the same seed, per
schedule, BF16's own as a line) and ``few-step-fidelity.png`` (prompt accuracy and SSIM
against the reference, per schedule and step count, of ``mixdiff eval --steps 1,2,4,8
--reference-model`` reports). Needs matplotlib (``pip install -e ".[plots]"``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over the last ``window`` values (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def loss_curves(logs: dict[str, Path], out: Path, window: int = 25) -> None:
    """Distillation and denoising loss per step of each training log (``loss.jsonl``)."""
    import matplotlib.pyplot as plt

    fig, (kd_axis, denoise_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for label, path in logs.items():
        records = [json.loads(line) for line in Path(path).read_text().splitlines()]
        steps = np.array([r["step"] for r in records])
        for axis, term in ((kd_axis, "kd"), (denoise_axis, "denoise")):
            axis.plot(steps, _smooth(np.array([r[term] for r in records]), window), label=label)
    kd_axis.set(title="distillation loss: student vs FP32 teacher (MSE)", xlabel="step", yscale="log")
    denoise_axis.set(title="denoising loss (MSE to the v target)", xlabel="step", yscale="log")
    for axis in (kd_axis, denoise_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"QAT on the embedded model, running mean over {window} steps")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fidelity_bars(reports: list[Path], out: Path) -> None:
    """1 − SSIM against FP32 of every non-reference schedule in the ``mixdiff eval`` reports."""
    import matplotlib.pyplot as plt

    rows, header = {}, None
    for path in reports:
        report = json.loads(Path(path).read_text())
        steps = ", ".join(map(str, report["steps"])) if isinstance(report["steps"], list) else report["steps"]
        header = header or f"{report['n']} prompts, {steps} steps, guidance {report['guidance_scale']}"
        rows.update({row["schedule"]: 1 - row["ssim"] for row in report["rows"] if row["ssim"] is not None})
    floor = rows.pop("bf16", None)
    labels = list(rows)
    fig, axis = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5), constrained_layout=True)
    colors = ["#c44e52" if "qat" not in label else "#4c72b0" for label in labels]
    bars = axis.bar(range(len(labels)), [rows[label] for label in labels], color=colors)
    axis.bar_label(bars, fmt="%.4f", fontsize=8)
    if floor is not None:
        axis.axhline(floor, color="gray", linestyle="--", label=f"bf16 alone: {floor:.4f}")
        axis.legend()
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set(ylabel="1 − SSIM vs FP32 (lower is closer)", title=f"Image fidelity by schedule ({header})")
    axis.grid(axis="y", alpha=0.3)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def few_step_curves(reports: list[Path], out: Path) -> None:
    """Prompt accuracy and SSIM against the reference by step count, one line per model and schedule;
    the reference's accuracy as a line."""
    import matplotlib.pyplot as plt

    fig, (accuracy_axis, ssim_axis) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    reference = None
    for path in reports:
        report = json.loads(Path(path).read_text())
        reference = reference or report["rows"][0]
        lines: dict[str, list[tuple[int, dict]]] = {}
        for row in report["rows"][1:]:
            schedule, _, steps = row["schedule"].rpartition(" @")
            lines.setdefault(f"{report['model']} {schedule}", []).append((int(steps), row))
        for label, points in lines.items():
            steps = [n for n, _ in points]
            accuracy_axis.plot(steps, [100 * r["accuracy"]["overall"] for _, r in points], marker="o", label=label)
            ssim_axis.plot(steps, [r["ssim"] for _, r in points], marker="o", label=label)
    accuracy_axis.axhline(100 * reference["accuracy"]["overall"], color="gray", linestyle="--",
                          label=f"{reference['schedule']}, {reference['steps']}")  # fmt: skip
    accuracy_axis.set(title="prompt accuracy (%)", xlabel="steps", xscale="log", ylim=(0, 100))
    ssim_axis.set(title=f"SSIM against {reference['schedule']}", xlabel="steps", xscale="log", ylim=(0, 1))
    for axis in (accuracy_axis, ssim_axis):
        axis.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize=8)
    fig.suptitle("A few-step model by step count")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapes.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", action="append", default=[], metavar="LABEL=LOSS_JSONL", help="a training log")
    parser.add_argument("--eval", action="append", default=[], type=Path, metavar="EVAL_JSON", help="a mixdiff eval report")
    parser.add_argument(
        "--few-steps", action="append", default=[], type=Path, metavar="EVAL_JSON",
        help="a mixdiff eval report over several step counts",
    )  # fmt: skip
    parser.add_argument("--window", type=int, default=25, help="steps of the loss curves' running mean")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    if args.loss:
        logs = dict(item.split("=", 1) for item in args.loss)
        loss_curves({label: Path(path) for label, path in logs.items()}, args.out / "qat-loss.png", args.window)
        print(f"wrote {args.out / 'qat-loss.png'}")
    if args.eval:
        fidelity_bars(args.eval, args.out / "fidelity-by-schedule.png")
        print(f"wrote {args.out / 'fidelity-by-schedule.png'}")
    if args.few_steps:
        few_step_curves(args.few_steps, args.out / "few-step-fidelity.png")
        print(f"wrote {args.out / 'few-step-fidelity.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
