"""``mixdiff eval`` end to end on the shipped model, at a handful of images and steps."""

import json

import pytest

from app.cli import main
from app.engine.schedule import SplitSchedule
from app.errors import InvalidRequest
from shapes.evaluate import parse_schedules, precisions_of


def test_parse_schedules_puts_the_fp32_reference_first():
    specs = parse_schedules("bf16, bf16/int8:5:5,fp32,bf16")
    assert [label for label, _ in specs] == ["fp32", "bf16", "bf16/int8:5:5"]
    assert specs[2][1] == SplitSchedule(high="bf16", low="int8", first=5, last=5)
    assert precisions_of(specs) == ["bf16", "fp32", "int8"]
    with pytest.raises(InvalidRequest, match="HIGH/LOW:FIRST:LAST"):
        parse_schedules("bf16/int8:5")


def test_eval_writes_one_row_per_schedule(tmp_path, capsys, model_dir):
    out = tmp_path / "eval"
    code = main(
        ["eval", "--model", str(model_dir), "--schedules", "fp32,bf16,bf16/fp32:1:1", "--n", "3", "--steps", "3",
         "--out", str(out), "--grid", str(tmp_path / "grid.png")]
    )
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert [row["schedule"] for row in report["rows"]] == ["fp32", "bf16", "bf16/fp32:1:1"]
    fp32, bf16, _ = report["rows"]
    assert fp32["psnr_db"] is None and 20 < bf16["psnr_db"] and 0.5 < bf16["ssim"] <= 1.0
    assert fp32["ssim_per_image"] is None and len(bf16["ssim_per_image"]) == 3
    assert bf16["ssim"] == pytest.approx(sum(bf16["ssim_per_image"]) / 3, abs=1e-5)
    assert bf16["ssim_median"] == sorted(bf16["ssim_per_image"])[1]
    assert set(fp32["accuracy"]) >= {"shape", "color", "overall"}
    assert fp32["agreement"] is None and 0.0 <= bf16["agreement"] <= 1.0
    assert "| bf16 |" in (out / "eval.md").read_text()
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_eval_names_a_precision_the_model_lacks(tmp_path, capsys, model_dir):
    code = main(["eval", "--model", str(model_dir), "--schedules", "fp16", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "fp16" in capsys.readouterr().err


def test_several_step_counts_need_a_reference_model(tmp_path, capsys, model_dir):
    code = main(["eval", "--model", str(model_dir), "--n", "2", "--steps", "2,4", "--out", str(tmp_path)])
    assert code == 2
    assert "several step counts need a reference made elsewhere" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()
