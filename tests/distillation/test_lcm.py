"""Latent consistency distillation: its boundary condition is LCMScheduler's, a run resumes
exactly, the student's folder loads and draws in a few steps with its own defaults, and bad
input is refused with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from app.cli import main
from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.tiny import build_tiny_pipeline
from app.pipeline.types import GenerationParams
from common.training import LOSS_LOG, Images
from distillation.lcm import LCMConfig, NoiseSchedule, boundary, write_student


def _random_images(n: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8), [f"a picture, number {i}" for i in range(n)]


def _config(work, **overrides) -> LCMConfig:
    settings = dict(
        data=Images(_random_images, "random images"), data_size=4, guidance=3.0, teacher_steps=10,
        train_steps=6, batch=2, lr=1e-3, warmup=1, work=work, checkpoint_every=100, seed=0,
    )  # fmt: skip
    return LCMConfig(**{**settings, **overrides})


def test_the_consistency_function_is_the_one_lcm_scheduler_samples():
    scheduler = LCMScheduler.from_config(build_tiny_pipeline("sd").scheduler.config)
    t = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = boundary(t)
    for i, step in enumerate(t.tolist()):
        assert (c_skip[i].item(), c_out[i].item()) == pytest.approx(
            scheduler.get_scalings_for_boundary_condition_discrete(step), rel=1e-6
        )
    # at t = 0 the consistency function is the identity: the trajectory has ended
    schedule = NoiseSchedule(scheduler.config, "epsilon")
    x = torch.randn(2, 4, 8, 8)
    any_unet = lambda *args, **kwargs: (torch.randn_like(x),)  # noqa: E731
    identity = schedule.consistency(any_unet, x, torch.zeros(2, dtype=torch.long), None)
    assert torch.allclose(identity, x)
    assert schedule.grid(10).tolist() == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_a_ddim_step_on_the_true_noise_lands_on_the_forward_process(prediction):
    """The teacher's step reads x0 and the noise back from the UNet's output as the model predicts."""
    schedule = NoiseSchedule(build_tiny_pipeline("sd").scheduler.config, prediction)
    z0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, s = torch.tensor([700, 300]), torch.tensor([680, 280])
    xt = schedule.add_noise(z0, noise, t)
    a = schedule.alphas[t].reshape(-1, 1, 1, 1)
    output = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
    x0, eps = schedule.x0_and_eps(xt, output, t)
    assert torch.allclose(x0, z0, atol=1e-4) and torch.allclose(eps, noise, atol=1e-4)
    assert torch.allclose(schedule.ddim_step(x0, eps, s), schedule.add_noise(z0, noise, s), atol=1e-4)


def test_a_resumed_run_continues_exactly_where_its_checkpoint_stopped(tmp_path):
    whole = _config(tmp_path / "whole").train(build_tiny_pipeline("sd"))
    _config(tmp_path / "cut", checkpoint_every=3).train(build_tiny_pipeline("sd"))  # a checkpoint after step 3
    resumed = _config(tmp_path / "cut", checkpoint_every=3, resume=True).train(build_tiny_pipeline("sd"))
    lines = [json.loads(line) for line in (tmp_path / "cut" / LOSS_LOG).read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "whole" / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]  # steps 4..6 run again, not appended
    assert [r["loss"] for r in lines] == pytest.approx([r["loss"] for r in expected], rel=1e-5)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="no checkpoint"):
        _config(tmp_path / "never", resume=True).train(build_tiny_pipeline("sd"))


def test_the_students_folder_draws_in_four_steps_with_its_own_defaults(tmp_path):
    pipe = build_tiny_pipeline("sd")
    teacher = tmp_path / "teacher"
    pipe.save_pretrained(teacher)
    (teacher / "mixdiff.json").write_text(json.dumps({"defaults": {"guidance_scale": 3.0}, "sizes": [64]}))
    config = _config(tmp_path / "work", train_steps=2)
    student = config.train(pipe)
    write_student(teacher, student, tmp_path / "student", config)
    assert json.loads((tmp_path / "student" / "mixdiff.json").read_text()) == {
        "sizes": [64], "defaults": {"steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "precision": "bf16"}
    }  # fmt: skip
    recipe = json.loads((tmp_path / "student" / "distillation.json").read_text())
    assert recipe["teacher"] == "teacher" and recipe["guidance"] == 3.0 and recipe["last_step"]["step"] == 2
    model = MixedPrecisionPipeline.load(str(tmp_path / "student"), ["bf16"])
    assert type(model.pipe.scheduler).__name__ == "LCMScheduler"
    defaults = model.info.defaults
    params = GenerationParams(
        prompt="a red circle", steps=defaults["steps"], guidance_scale=defaults["guidance_scale"],
        scheduler=defaults["scheduler"],
    )  # fmt: skip
    result = model.generate(params, ["bf16"] * 4)
    # four of the teacher's 10-step DDIM grid, the timesteps the student was trained at
    assert [round(s.timestep) for s in result.steps] == [999, 799, 499, 299]
    assert not (tmp_path / "student.partial").exists()


def test_bad_input_is_refused_with_a_message(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    build_tiny_pipeline("sd").save_pretrained(teacher)
    (tmp_path / "exists").mkdir()
    for argv, says in [
        (["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")], "is not a diffusers pipeline folder"),
        (["--model", str(teacher), "--out", str(tmp_path / "exists")], "already exists"),
        (["--model", str(teacher), "--out", str(tmp_path / "s"), "--data", str(tmp_path / "none")], "does not exist"),
        (["--model", str(teacher), "--out", str(tmp_path / "s"), "--guidance", "0.5"], "--guidance must be at least 1"),
        (["--model", str(teacher), "--out", str(tmp_path / "s"), "--work", str(tmp_path / "s")], "folder of their own"),
    ]:
        assert main(["distill", "lcm", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
