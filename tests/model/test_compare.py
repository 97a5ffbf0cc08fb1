"""``shapes.compare``: two eval rows image by image, flips apart."""

import json
import subprocess
import sys

import numpy as np
import pytest

from shapes.compare import compare


def test_flips_are_counted_apart_from_the_typical_image():
    a = np.array([0.01, 0.01, 0.01, 0.20])  # one flip makes its mean the larger
    b = np.array([0.02, 0.02, 0.02, 0.02])
    result = compare(a, b, flip=0.03)
    assert result["a"]["mean"] > result["b"]["mean"]
    assert (result["a"]["flipped"], result["b"]["flipped"]) == (1, 0)
    assert result["a"]["median"] == 0.01 and result["a"]["mean_unflipped"] == pytest.approx(0.01)
    assert (result["a_closer"], result["b_closer"]) == (0.75, 0.25)
    assert result["both_unflipped_mean"] == pytest.approx([0.01, 0.02])
    every_one_flipped = compare(np.array([0.5, 0.5]), np.array([0.4, 0.6]), flip=0.03)
    assert np.isnan(every_one_flipped["a"]["mean_unflipped"]) and np.isnan(every_one_flipped["both_unflipped_mean"][0])


def test_it_reads_an_eval_report_and_names_a_missing_row(tmp_path):
    rows = [
        {"schedule": "fp32", "ssim_per_image": None},
        {"schedule": "int8", "ssim_per_image": [0.99, 0.98, 0.7]},
        {"schedule": "int8-qat", "ssim_per_image": [0.985, 0.985, 0.985]},
    ]
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"n": 3, "rows": rows}))
    run = [sys.executable, "-m", "shapes.compare", str(report)]
    out = subprocess.run([*run, "int8", "int8-qat"], capture_output=True, text=True, check=True).stdout
    assert "| int8 | 0.1100 | 0.0200 | 1 | 0.0150 | 33% | 0.0150 |" in out
    missing = subprocess.run([*run, "int8", "bf16"], capture_output=True, text=True)
    assert missing.returncode != 0
    assert "no schedule 'bf16' in the report; it has: fp32, int8, int8-qat" in missing.stderr
    reference = subprocess.run([*run, "fp32", "int8"], capture_output=True, text=True)
    assert reference.returncode != 0 and "'fp32' has no per-image SSIM" in reference.stderr
