"""Two schedules of one ``mixdiff eval`` report, image by image.

    python -m shapes.compare runs/eval/eval.json int8 int8-qat [--flip 0.03]

A mean of 1 − SSIM over a few hundred images moves with the few whose composition flips
(an object drawn elsewhere or in another colour: 1 − SSIM of 0.1 and more, where the rest
sit near 0.01). This separates the two: per schedule, the mean and median of 1 − SSIM
against the reference, the images past ``--flip``, and the mean of the others; then, over
the same prompts and seeds, how often each schedule's image is the closer one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def losses(report: dict, schedule: str) -> np.ndarray:
    """1 − SSIM of each image of ``schedule`` against the report's reference, in prompt order."""
    rows = {row["schedule"]: row for row in report["rows"]}
    if schedule not in rows:
        raise ValueError(f"no schedule {schedule!r} in the report; it has: {', '.join(rows)}")
    per_image = rows[schedule].get("ssim_per_image")
    if per_image is None:
        raise ValueError(f"{schedule!r} has no per-image SSIM (the reference row, or a report made before them)")
    return 1.0 - np.asarray(per_image)


def _mean(values: np.ndarray) -> float:
    """The mean, NaN where there is nothing to average."""
    return float(values.mean()) if values.size else float("nan")


def summary(loss: np.ndarray, flip: float) -> dict:
    flipped = loss > flip
    return {
        "mean": float(loss.mean()),
        "median": float(np.median(loss)),
        "flipped": int(flipped.sum()),
        "mean_unflipped": _mean(loss[~flipped]),
    }


def compare(a: np.ndarray, b: np.ndarray, flip: float) -> dict:
    """Both schedules' summaries and the share of images where each is closer to the reference."""
    neither = (a <= flip) & (b <= flip)
    return {
        "a": summary(a, flip),
        "b": summary(b, flip),
        "a_closer": float((a < b).mean()),
        "b_closer": float((b < a).mean()),
        "both_unflipped_mean": [_mean(a[neither]), _mean(b[neither])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a mixdiff eval report (eval.json)")
    parser.add_argument("a", help="a schedule of the report, as its row names it")
    parser.add_argument("b")
    parser.add_argument("--flip", type=float, default=0.03, help="1 − SSIM past which an image counts as flipped")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    try:
        result = compare(losses(report, args.a), losses(report, args.b), args.flip)
    except ValueError as exc:
        raise SystemExit(f"shapes.compare: {exc}") from None
    print(f"{report['n']} images, 1 − SSIM against the reference; flipped: past {args.flip}")
    print("| schedule | mean | median | flipped | mean of the rest | closer on | mean where neither flipped |")
    print("|---|---|---|---|---|---|---|")
    for key, name, index in (("a", args.a, 0), ("b", args.b, 1)):
        s = result[key]
        print(f"| {name} | {s['mean']:.4f} | {s['median']:.4f} | {s['flipped']} | {s['mean_unflipped']:.4f} | "
              f"{result[key + '_closer']:.0%} | {result['both_unflipped_mean'][index]:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
