"""Quantization-aware training: it lowers the student's distance to the teacher, its artifact is
an artifact like PTQ's, a run resumes where its checkpoint stopped, every data source gives
latents of the model's shape, and bad input is refused with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from artifact_helpers import OPTIONS, PROMPTS, rel_mse, run_in_fresh_process
from PIL import Image

from app.cli import main
from common.training import LOSS_LOG, GeneratedLatents, ImageFolder, Images, embed
from quantization.build import BuildContext, build_artifact
from quantization.graph import export_unet
from quantization.inputs import BATCH
from quantization.methods import qat
from quantization.package import run_bf16
from shapes import dataset

pytestmark = pytest.mark.slow


def _random_images(n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` random 64x64 images (the tiny pipeline's size) with captions."""
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8), [f"a picture, number {i}" for i in range(n)]


def _config(work, **overrides) -> qat.QATConfig:
    settings = dict(
        data=Images(_random_images, "random images"),
        data_size=2,
        train_steps=12,
        batch=BATCH,
        lr=1e-3,
        warmup=1,
        kd_weight=1.0,
        denoise_weight=0.0,
        work=work,
        checkpoint_every=100,
        seed=0,
    )
    return qat.QATConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def graph(tiny_pipe, calibration_split):
    return export_unet(tiny_pipe.unet, calibration_split[0][0])


def _fixed_batch(pipe, config: qat.QATConfig):
    """The config's training latents and captions noised at four fixed timesteps: UNet
    arguments, and the noise the tiny pipeline's UNet predicts."""
    latents, captions = config.data.latents(pipe, config.data_size)
    t = torch.tensor([100, 300, 500, 700])
    latents, states = latents.repeat(2, 1, 1, 1), embed(pipe, captions).repeat(2, 1, 1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    return (pipe.scheduler.add_noise(latents, noise, t), t.float(), states), noise


def test_training_steps_bring_the_student_closer_to_the_teacher(tiny_pipe, calibration_split, graph, tmp_path):
    """The distillation loss of a fixed batch falls as the student trains on it: the fake
    quantizers pass gradients, the optimizer moves weights and ranges the right way."""
    config = _config(tmp_path)
    student = config.make_student(graph, [], calibration_split[0])
    optimizer = torch.optim.AdamW(qat.trainable(student), lr=1e-5)
    (args, target), kd = _fixed_batch(tiny_pipe, config), []
    for _ in range(10):
        chunks = [
            config.losses(student, graph, tuple(a[i : i + BATCH] for a in args), target[i : i + BATCH])
            for i in range(0, len(target), BATCH)
        ]
        optimizer.zero_grad()
        sum(c["loss"] for c in chunks).backward()
        optimizer.step()
        kd.append(sum(float(c["kd"]) for c in chunks))
    assert kd[-1] < 0.7 * kd[0], kd


def test_the_training_loop_logs_every_step(tiny_pipe, calibration_split, graph, tmp_path):
    _config(tmp_path, train_steps=3).train(graph, [], calibration_split[0], tiny_pipe)
    log = [json.loads(line) for line in (tmp_path / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["loss"] == r["kd"] > 0 and r["lr"] > 0 for r in log)  # kd alone: denoise_weight 0


def test_guided_distillation_trains_on_cfg_pairs_and_compares_their_guided_outputs(
    tiny_pipe, calibration_split, graph, tmp_path
):
    assert torch.equal(qat.guided(torch.tensor([[1.0], [3.0]]), 4.0), torch.tensor([[9.0]]))  # 1 + 4 (3 - 1)
    _config(tmp_path, guidance=4.0, train_steps=2).train(graph, [], calibration_split[0], tiny_pipe)
    log = [json.loads(line) for line in (tmp_path / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["kd"] > 0 for r in log)


def test_frozen_weights_train_all_but_the_weights_int8_rounds(tiny_pipe, calibration_split, graph, tmp_path):
    config = _config(tmp_path, train_steps=3, train_weights=False)
    trained = dict(config.train(graph, [], calibration_split[0], tiny_pipe).named_parameters())
    fresh = dict(config.make_student(graph, [], calibration_split[0]).named_parameters())
    weights = [name for name, p in fresh.items() if p.dim() >= 2]
    assert weights and all(torch.equal(trained[name], fresh[name]) for name in weights)
    moved = [name for name, p in fresh.items() if p.dim() < 2 and not torch.equal(trained[name], p)]
    assert any(name.endswith("bias") for name in moved) and any("activation_post_process" in name for name in moved)


def test_a_rollout_of_the_teacher_retraces_the_teachers_own_trajectory(tiny_pipe, graph):
    """The trajectories rollouts are measured against are the sampler's own: the FP32 graph,
    rolled out from any point of one, lands where the trajectory went."""
    ddim = qat.sampler(tiny_pipe, 6)
    captions = ["a red circle", "a blue square"]
    states, empty = embed(tiny_pipe, captions), embed(tiny_pipe, [""])
    trajectories = qat.teacher_trajectories(tiny_pipe, captions, ddim, guidance=3.0, seed=0)
    size = tiny_pipe.unet.config.sample_size
    assert trajectories.shape == (2, 7, tiny_pipe.unet.config.in_channels, size, size)
    assert not torch.equal(trajectories[0], trajectories[1])
    with torch.no_grad():
        landed = qat.roll_out(graph, ddim, trajectories[1, 2:3], 2, 3, torch.cat([empty, states[1:]]), 3.0)
    assert rel_mse(landed, trajectories[1, 5:6]) < 1e-8
    # and where a trajectory ends is the pipeline's own image of that caption and seed with DDIM
    pipe = type(tiny_pipe)(**{**tiny_pipe.components, "scheduler": ddim})
    image = pipe("a blue square", num_inference_steps=6, guidance_scale=3.0, output_type="latent",
                 generator=torch.Generator().manual_seed(1)).images  # fmt: skip
    assert rel_mse(image, trajectories[1, 6:]) < 1e-8


def test_rollout_distillation_trains_through_several_sampler_steps(tiny_pipe, calibration_split, graph, tmp_path):
    """A rollout chains the student's own steps, the gradient goes back through all of them, and
    the rollout loss falls as the student trains on one example."""
    config = _config(tmp_path, guidance=3.0, rollout=3, rollout_sampler_steps=6)
    ddim = qat.sampler(tiny_pipe, 6)
    states, empty = embed(tiny_pipe, ["a red circle"]), embed(tiny_pipe, [""])
    trajectories = qat.teacher_trajectories(tiny_pipe, ["a red circle"], ddim, guidance=3.0, seed=0)
    student = config.make_student(graph, [], calibration_split[0])
    text = torch.cat([empty, states])
    start = trajectories[0, 1:2].clone().requires_grad_()
    landed = qat.roll_out(student, ddim, start, 1, 3, text, 3.0)
    chained = start
    for first in (1, 2, 3):
        chained = qat.roll_out(student, ddim, chained, first, 1, text, 3.0)
    assert torch.equal(landed, chained) and not torch.equal(landed, trajectories[0, 4:5])
    (grad,) = torch.autograd.grad(landed.square().sum(), start)
    assert grad.abs().sum() > 0
    optimizer = torch.optim.AdamW(qat.trainable(student), lr=1e-4)
    losses = []
    for _ in range(8):
        terms = config._rollout_terms(student, ddim, trajectories, states, empty, np.random.default_rng(0))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["kd"]))
    assert losses[-1] < 0.7 * losses[0], losses

    _config(tmp_path, guidance=3.0, rollout=3, rollout_sampler_steps=6, train_steps=2).train(
        graph, [], calibration_split[0], tiny_pipe
    )
    log = [json.loads(line) for line in (tmp_path / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] == r["kd"] > 0 for r in log)


def test_a_qat_artifact_loads_in_a_fresh_process_and_computes_the_trained_student(
    tiny_pipe, calibration_split, tmp_path
):
    calibration, held_out = calibration_split
    config = _config(tmp_path / "work", train_steps=4, lr=1e-4)
    out = tmp_path / "model" / "quantized" / "int8-qat"
    manifest = build_artifact(config, tiny_pipe, PROMPTS, out, OPTIONS)
    assert manifest["method"] == "qat-int8-static"
    assert manifest["recipe"]["training"]["train_steps"] == 4
    assert manifest["recipe"]["training"]["last_step"]["step"] == 4

    # The student the build trained (kept by the config), converted again as the build converts it.
    graph = export_unet(tiny_pipe.unet, calibration[0])
    converted = config.quantize(graph, [], calibration, BuildContext(tiny_pipe, 1))
    result = run_in_fresh_process(out, [x.args() for x in held_out], tmp_path)
    assert result["precision"] == "int8-qat"  # the artifact's name
    for got, item in zip(result["outputs"], held_out):
        assert rel_mse(got, run_bf16(converted, item)) < 1e-2


def test_resume_continues_where_the_checkpoint_stopped(tiny_pipe, calibration_split, graph, tmp_path):
    calibration, _ = calibration_split
    whole = _config(tmp_path, train_steps=4, checkpoint_every=2).train(graph, [], calibration, tiny_pipe)
    whole_log = (tmp_path / LOSS_LOG).read_text().splitlines()
    # The run stopped after step 2's checkpoint (the log may have gone further); resume it.
    resumed = _config(tmp_path, train_steps=4, checkpoint_every=2, resume=True).train(
        graph, [], calibration, tiny_pipe
    )
    resumed_log = (tmp_path / LOSS_LOG).read_text().splitlines()

    def losses(lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert losses(resumed_log) == losses(whole_log)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_with_other_options_is_refused(tiny_pipe, calibration_split, graph, tmp_path):
    _config(tmp_path, train_steps=2, checkpoint_every=1).train(graph, [], calibration_split[0], tiny_pipe)
    with pytest.raises(ValueError, match=r"saved by a run with other options \(lr 0.001 -> 0.0001\)"):
        _config(tmp_path, train_steps=2, lr=1e-4, resume=True).train(graph, [], calibration_split[0], tiny_pipe)


def test_resume_without_a_checkpoint_says_so(tiny_pipe, calibration_split, graph, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        _config(tmp_path, resume=True).train(graph, [], calibration_split[0], tiny_pipe)


def _folder(tmp_path, n: int, size: int = 40):
    folder = tmp_path / "images"
    folder.mkdir()
    images, captions = _random_images(n)
    for i in range(n):
        Image.fromarray(images[i]).resize((size, size)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(captions[i] + "\n")
    return folder


@pytest.mark.parametrize("source", ["images", "folder", "generated", "shapes"])
def test_every_data_source_gives_latents_of_the_models_shape(tiny_pipe, tmp_path, source):
    data = {
        "images": lambda: Images(_random_images, "random images"),
        "folder": lambda: ImageFolder(_folder(tmp_path, 2)),  # 40 px, resized to the model's 64
        "generated": lambda: GeneratedLatents(["a red circle", "a blue square"], steps=2),
        "shapes": lambda: Images(lambda n: dataset.examples(n, dataset.QAT_SEED), "shapes"),
    }[source]()
    latents, captions = data.latents(tiny_pipe, 3)
    unet = tiny_pipe.unet.config
    assert latents.shape == (3, unet.in_channels, unet.sample_size, unet.sample_size)
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert len(captions) == 3 and all(captions)


def test_images_of_the_wrong_size_are_refused(tiny_pipe):
    wrong = Images(lambda n: (np.zeros((n, 32, 32, 3), np.uint8), ["x"] * n), "small images")
    with pytest.raises(ValueError, match="training images are 32x32 px; this model draws 64x64"):
        wrong.latents(tiny_pipe, 2)


@pytest.fixture
def model(tmp_path):
    """A folder that passes the command's first check; the errors below come before loading it."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


def _quantize_qat(model, *flags) -> int:
    return main(["quantize", "qat", "--model", str(model), "--out", "int8-qat", *flags])


def test_bad_training_data_is_refused_with_a_message(model, tmp_path, capsys):
    assert _quantize_qat(model, "--data", str(tmp_path / "missing")) == 2
    assert "training data folder" in capsys.readouterr().err

    folder = _folder(tmp_path, 2)
    (folder / "001.txt").unlink()
    assert _quantize_qat(model, "--data", str(folder)) == 2
    err = capsys.readouterr().err
    assert "image 001.png" in err and "has no caption file 001.txt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch", "3"], "--batch must be a multiple of 2"),
        (["--caption-dropout", "1.5"], "--caption-dropout must be within [0, 1]"),
        (["--kd-weight", "0", "--denoise-weight", "0"], "at least one loss weight must be positive"),
        (["--timestep-groups", "2"], "qat trains one set of activation ranges"),
        (["--rollout", "4"], "--rollout runs the sampler as it generates, with classifier-free guidance"),
        (["--rollout", "4", "--kd-guidance", "1"], "give its scale, above 1, with --kd-guidance"),
        (["--rollout", "4", "--kd-guidance", "5", "--denoise-weight", "1"], "--rollout distills the trajectory alone"),
        (["--kd-guidance", "5", "--caption-dropout", "0.2"], "train on CFG pairs, every caption with its empty one"),
        (["--rollout", "60", "--kd-guidance", "5"], "--rollout must be within [1, --rollout-sampler-steps = 50]"),
        (["--rollout", "4", "--kd-guidance", "5", "--timesteps", "normal"], "--rollout starts from points of the"),
    ],
)
def test_bad_training_options_are_refused_with_a_message(model, flags, message, capsys):
    assert _quantize_qat(model, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", "qat", "--timesteps", "gauss"])
    assert exit_.value.code == 2
    assert "invalid choice: 'gauss'" in capsys.readouterr().err
