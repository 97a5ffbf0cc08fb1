"""Quantization-aware training with knowledge distillation (``mixdiff quantize qat``).

The method of "Effective Quantization for Diffusion Models on CPUs": the FP32 UNet is
the teacher; a copy of it, fake-quantized as the INT8 artifact will compute
(``prepare_qat_pt2e`` with ``UNetQuantizer`` set for QAT: per-channel weights,
per-tensor activations), is the student. Its activation ranges start from PTQ's on the
calibration inputs and, unless fixed, train with the weights (LSQ). Each step noises
training latents at timesteps drawn as in the model's training, runs both UNets, and
updates the student on

    denoise_weight · ‖o_S − target‖² + kd_weight · ‖o_S − o_T‖² [+ feature_kd_weight · Σ_blocks ‖f_S − f_T‖² / ‖f_T‖²]

(``target`` is the noise or the velocity, as the model predicts). Then the student is
converted (``convert_pt2e``) and goes through the same packaging as every method.

With ``rollout`` M > 0 the distillation sees the sampler instead of one call: the FP32
teacher first runs the model's DDIM sampler from noise for each training caption (its own
trajectories, guided at ``guidance``); each example starts the student at a point of one
of them, runs it M sampler steps on its own outputs, and compares where it lands with
where the teacher's trajectory went, ``kd_weight · ‖x_S − x_T‖²`` on the latent, with the
gradient through all M steps. An error the student makes the same way at every step adds
up in that loss, where one call at a time weighs it once.

The training latents come from one of ``common.training``'s sources (data set, image
folder, or data-free latents the FP32 model generates). Training is deterministic
for a seed, writes a checkpoint every ``checkpoint_every`` steps and a line per step to
``loss.jsonl`` in ``work``, and ``resume`` continues from the last checkpoint there.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from common.training import GeneratedLatents, Images, TrainingRun, TrainingState, embed, lr_factor
from quantization.calibration import NORMAL_MEAN, NORMAL_STD
from quantization.graph import drop_tensor_metadata_asserts
from quantization.inputs import BATCH, run_in_batches
from quantization.methods.ptq import RECIPE as PTQ_RECIPE
from quantization.methods.ptq import make_quantizer

log = logging.getLogger(__name__)

TIMESTEP_LAWS = ("uniform", "normal")
EXAMPLES, ROLLOUT_TRAJECTORIES, CAPTION_DROPOUT = 2048, 256, 0.1


# 2. the student and what it is taught with ----------------------------------------------


def _blocks(unet: torch.nn.Module) -> list[str]:
    """The UNet's down, mid and up blocks, whose outputs feature distillation compares."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    names += ["mid_block"] if unet.mid_block is not None else []
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def _last_node_of(graph: torch.fx.GraphModule, block: str) -> str:
    """The name of the last node computed inside UNet module ``block`` (its output)."""
    path = f"unet.{block}"
    last = None
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and any(p == path or p.startswith(path + ".") for p, _ in stack.values()):
            last = node.name
    if last is None:
        raise ValueError(f"no node of {path} in the exported graph")
    return last


class _Taps:
    """Values of chosen nodes of a graph module, recorded on every call (for feature distillation).

    ``add`` inserts a recording call after each node; ``remove`` takes the calls out again."""

    def __init__(self):
        self.values: dict[str, torch.Tensor] = {}
        self.nodes: list[torch.fx.Node] = []

    def _record(self, name: str, value: torch.Tensor) -> None:
        self.values[name] = value

    def add(self, graph: torch.fx.GraphModule, names: Sequence[str]) -> _Taps:
        by_name = {node.name: node for node in graph.graph.nodes}
        for name in names:
            with graph.graph.inserting_after(by_name[name]):
                self.nodes.append(graph.graph.call_function(self._record, (name, by_name[name])))
        graph.recompile()
        return self

    def remove(self, graph: torch.fx.GraphModule) -> None:
        for node in self.nodes:
            graph.graph.erase_node(node)
        self.nodes = []
        graph.recompile()


def _feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of each block's output error relative to the teacher's output size."""
    terms = [F.mse_loss(student[k].float(), v.float()) / v.float().pow(2).mean().clamp_min(1e-12) for k, v in teacher.items()]
    return torch.stack(terms).mean()


def _observers(graph: torch.fx.GraphModule) -> list[torch.nn.Module]:
    """The observers (or fake quantizers) ``prepare_*_pt2e`` inserted, in graph order."""
    modules = dict(graph.named_modules())
    return [
        modules[node.target]
        for node in graph.graph.nodes
        if node.op == "call_module" and node.target.startswith("activation_post_process_")
    ]


@torch.no_grad()
def start_from_ptq(student: torch.fx.GraphModule, graph, fallback: Sequence[str], calibration) -> int:
    """Give ``student``'s activation fake quantizers PTQ's ranges (histogram observers on the
    calibration inputs) and freeze them there; weights keep tracking their own ranges. The
    moving-average min/max ranges QAT would start from take the first batch's extremes:
    ten times PTQ's error on the embedded model. Returns how many ranges were set."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    observed = prepare_pt2e(copy.deepcopy(graph), make_quantizer(fallback))
    for item in calibration:
        run_in_batches(observed, item.args())
    ptq, qat = _observers(observed), _observers(student)
    if len(ptq) != len(qat):
        raise RuntimeError(f"PTQ and QAT annotate the graph differently ({len(ptq)} and {len(qat)} observers)")
    n = 0
    for source, fake in zip(ptq, qat):
        if fake.qscheme != torch.per_tensor_affine:  # a weight: its range follows it as it trains
            continue
        scale, zero_point = source.calculate_qparams()
        low, high = fake.activation_post_process.quant_min, fake.activation_post_process.quant_max
        fake.activation_post_process.min_val.copy_(((low - zero_point) * scale).reshape(()))
        fake.activation_post_process.max_val.copy_(((high - zero_point) * scale).reshape(()))
        fake.scale.copy_(scale)
        fake.zero_point.copy_(zero_point)
        fake.disable_observer()
        n += 1
    return n


def _learnable_ranges(student: torch.fx.GraphModule) -> int:
    """Make every activation fake quantizer's scale and zero point trainable (LSQ, with its
    gradient scaling), starting from the range it holds. Returns how many there are."""
    from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver

    n = 0
    for name, fake in list(student.named_children()):
        if not name.startswith("activation_post_process_") or fake.qscheme != torch.per_tensor_affine:
            continue
        learnable = LearnableFakeQuantize(
            MinMaxObserver,
            quant_min=fake.quant_min,
            quant_max=fake.quant_max,
            use_grad_scaling=True,
            dtype=fake.dtype,
            qscheme=fake.qscheme,
        )
        scale, zero_point = fake.calculate_qparams()
        learnable._initialize_or_update_qparams(scale.detach().clone().reshape(1), zero_point.detach().clone().reshape(1))
        learnable.enable_range_learning()
        setattr(student, name, learnable)
        n += 1
    return n


def guided(pair: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of a CFG pair of outputs (unconditional first)."""
    return pair[:1] + scale * (pair[1:] - pair[:1])


def trainable(student: torch.fx.GraphModule, weights: bool = True) -> list[torch.nn.Parameter]:
    """The student's parameters that training updates, set to need gradients: all of them, or
    without ``weights``, all but the convolution and linear weights, which INT8 rounds to a
    grid (biases, normalization scales and learned activation ranges stay)."""
    params = [p for p in student.parameters() if p.is_floating_point() and (weights or p.dim() < 2)]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def sampler(pipe, steps: int):
    """The model's DDIM sampler (the evaluation's) set to ``steps`` steps: deterministic, so a
    rollout from a point of a trajectory is a function of the UNet's outputs alone."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def teacher_trajectories(pipe, captions: Sequence[str], scheduler, guidance: float, seed: int,
                         batch: int = 16) -> torch.Tensor:  # fmt: skip
    """The FP32 pipeline's own runs with ``scheduler``, one from noise of seed ``seed + j`` for
    each of ``captions``, guided at ``guidance``: latents (n, steps + 1, c, h, w), the one each
    step starts from and the last one."""
    teacher = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    size = pipe.unet.config.sample_size
    shape = (1, pipe.unet.config.in_channels, size, size)
    runs = []
    for start in range(0, len(captions), batch):
        chunk = captions[start : start + batch]
        seeds = [torch.Generator().manual_seed(seed + start + j) for j in range(len(chunk))]
        noise = torch.cat([torch.randn(shape, generator=g) for g in seeds])
        path = [noise * scheduler.init_noise_sigma]  # what the pipeline starts from

        def record(pipe, step, timestep, tensors):
            path.append(tensors["latents"])
            return {}

        teacher(list(chunk), num_inference_steps=len(scheduler.timesteps), guidance_scale=guidance, latents=noise,
                output_type="latent", callback_on_step_end=record)  # fmt: skip
        runs.append(torch.stack(path, dim=1).float())
        log.info("qat: teacher trajectories %d/%d", start + len(chunk), len(captions))
    return torch.cat(runs)


def roll_out(student, scheduler, x: torch.Tensor, first: int, steps: int, text: torch.Tensor,
             guidance: float) -> torch.Tensor:  # fmt: skip
    """Latent ``x`` (1, c, h, w) taken ``steps`` sampler steps by ``student`` from step ``first``,
    each a guided CFG pair (``text``: empty caption first), differentiable throughout."""
    for t in scheduler.timesteps[first : first + steps]:
        pair = student(x.repeat(BATCH, 1, 1, 1), t.float().repeat(BATCH), text)
        x = scheduler.step(guided(pair, guidance), t, x).prev_sample
    return x


def _draw_timesteps(law: str, n: int, rng: np.random.Generator, T: int) -> torch.Tensor:
    if law == "uniform":
        t = rng.integers(0, T, size=n)
    else:
        t = np.clip(np.rint(rng.normal(NORMAL_MEAN * T, NORMAL_STD * T, size=n)), 0, T - 1)
    return torch.from_numpy(t.astype(np.int64))


# 3. the method ---------------------------------------------------------------------------


@dataclass
class QATConfig:
    """Quantization-aware training of the student against the FP32 teacher, then static INT8."""

    name: ClassVar[str] = "qat"
    manifest_method: ClassVar[str] = "qat-int8-static"
    int8_attention: ClassVar[bool] = True  # the exported graph's attention: both products in INT8

    data: Images | GeneratedLatents | None = None
    data_size: int | None = None  # EXAMPLES, or ROLLOUT_TRAJECTORIES with ``rollout``
    timesteps: str = "uniform"
    caption_dropout: float | None = None  # CAPTION_DROPOUT; not with ``rollout``
    guidance: float = 0.0
    rollout: int = 0
    rollout_sampler_steps: int = 50
    train_steps: int = 400
    batch: int = 8
    lr: float = 1e-5
    warmup: int = 50
    kd_weight: float = 1.0
    denoise_weight: float = 0.0
    feature_kd_weight: float = 0.0
    ema: float = 0.0
    init_from_calibration: bool = True
    learn_ranges: bool = True
    train_weights: bool = True
    work: Path = Path("runs/qat/int8")
    checkpoint_every: int = 100
    resume: bool = False
    seed: int = 0
    #: what the training run did, for the manifest (filled in by ``quantize``)
    summary: dict = field(default_factory=dict, repr=False)
    _trained: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.data is None:
            raise ValueError("QAT needs training data")
        if self.timesteps not in TIMESTEP_LAWS:
            raise ValueError(f"unknown timestep law {self.timesteps!r}; known: {', '.join(TIMESTEP_LAWS)}")
        if self.batch % BATCH:
            raise ValueError(f"--batch must be a multiple of {BATCH} (the UNet graph's batch), got {self.batch}")
        if (self.rollout or self.guidance) and self.caption_dropout is not None:
            raise ValueError("--kd-guidance and --rollout train on CFG pairs, every caption with its empty one: "
                             "drop --caption-dropout")  # fmt: skip
        if self.data_size is None:
            self.data_size = ROLLOUT_TRAJECTORIES if self.rollout else EXAMPLES
        if self.caption_dropout is None and not (self.rollout or self.guidance):
            self.caption_dropout = CAPTION_DROPOUT
        if self.caption_dropout is not None and not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"--caption-dropout must be within [0, 1], got {self.caption_dropout}")
        if self.guidance < 0:
            raise ValueError(f"--kd-guidance must not be negative, got {self.guidance}")
        if self.rollout < 0:
            raise ValueError(f"--rollout must not be negative, got {self.rollout}")
        if self.rollout:
            if self.guidance <= 1:
                raise ValueError(
                    "--rollout runs the sampler as it generates, with classifier-free guidance: give its scale, "
                    "above 1, with --kd-guidance"
                )
            if not 1 <= self.rollout <= self.rollout_sampler_steps:
                raise ValueError(
                    f"--rollout must be within [1, --rollout-sampler-steps = {self.rollout_sampler_steps}], "
                    f"got {self.rollout}"
                )
            if self.denoise_weight or self.feature_kd_weight:
                raise ValueError(
                    "--rollout distills the trajectory alone: drop --denoise-weight and --feature-kd-weight"
                )
            if self.timesteps != "uniform":
                raise ValueError("--rollout starts from points of the sampler's own trajectories: drop --timesteps")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be within [0, 1), got {self.ema}")
        if min(self.kd_weight, self.denoise_weight, self.feature_kd_weight) < 0:
            raise ValueError("loss weights must not be negative")
        if self.kd_weight + self.denoise_weight + self.feature_kd_weight == 0:
            raise ValueError("at least one loss weight must be positive")
        if self.learn_ranges and not self.init_from_calibration:
            raise ValueError("learned activation ranges start from PTQ's: drop --no-init-from-calibration or add --fixed-ranges")

    def recipe(self) -> dict:
        skipped = {"data", "summary", "_trained", "work", "resume"}
        skipped |= {"timesteps", "caption_dropout"} if self.rollout else {"rollout_sampler_steps"}
        skipped |= {"caption_dropout"} if self.guidance else set()
        options = {k: v for k, v in asdict(self).items() if k not in skipped}
        return {
            **PTQ_RECIPE,
            "flow": "pt2e qat (torch.export -> prepare_qat_pt2e -> train against the fp32 teacher -> convert_pt2e)",
            "activations": "uint8 per-tensor affine, static: "
            + ("PTQ's ranges on the calibration inputs" if self.init_from_calibration else "moving-average ranges")
            + (", then trained (LSQ)" if self.learn_ranges else ""),
            **({} if self.train_weights else {"weights": f"{PTQ_RECIPE['weights']}, kept as PTQ rounds them"}),
            "training": {
                **options,
                "data": self._data_description(),
                "loss": self._loss_description(),
                "optimizer": "AdamW (0.9, 0.999), no weight decay, gradients clipped to norm 1, warm-up then cosine",
                **self.summary,
            },
        }

    def _data_description(self) -> str:
        if self.rollout:
            return (
                f"the captions of {self.data.description}; the fp32 teacher's DDIM trajectories from them, "
                f"{self.rollout_sampler_steps} steps, guidance {self.guidance}, seeds {self.seed}.."
                f"{self.seed + self.data_size - 1}"
            )
        return self.data.description

    def _loss_description(self) -> str:
        if self.rollout:
            return (
                f"kd_weight * mse of the latent after {self.rollout} DDIM steps of the student (of "
                f"{self.rollout_sampler_steps}, guided at scale {self.guidance}) against the fp32 teacher's own "
                "trajectory"
            )
        return (
            "denoise_weight * mse(student, target) + kd_weight * mse(student, fp32 teacher)"
            + (f" on the CFG-guided output at scale {self.guidance}" if self.guidance else "")
            + (" + feature_kd_weight * block-output mse" if self.feature_kd_weight else "")
        )

    def quantize(self, graph: torch.fx.GraphModule, fallback: Sequence[str], calibration, context) -> torch.fx.GraphModule:
        """The student trained with everything but ``fallback`` fake-quantized, converted to INT8.
        A fallback set trained once is not trained again (the build may retry a compile)."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        if context.timestep_groups > 1:
            raise ValueError("qat trains one set of activation ranges: use --timestep-groups 1")
        if context.batch != BATCH:
            raise ValueError("qat trains on guided pairs: calibrate with guidance above 1 (--guidance-scale)")
        key = tuple(fallback)
        if key not in self._trained:
            self._trained[key] = self.train(graph, fallback, calibration, context.pipe)
        converted = convert_pt2e(copy.deepcopy(self._trained[key]))
        drop_tensor_metadata_asserts(converted)
        return converted

    def make_student(self, graph: torch.fx.GraphModule, fallback: Sequence[str], calibration) -> torch.fx.GraphModule:
        """``graph`` fake-quantized for training, everything but ``fallback``; its activation
        ranges PTQ's on ``calibration`` (unless ``init_from_calibration`` is off), trainable
        with ``learn_ranges``."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        student = prepare_qat_pt2e(copy.deepcopy(graph), make_quantizer(fallback, is_qat=True))
        if self.init_from_calibration and calibration:
            ranges = start_from_ptq(student, graph, fallback, calibration)
            log.info("qat: %d activation ranges from PTQ calibration on %d inputs", ranges, len(calibration))
        if self.learn_ranges:
            log.info("qat: %d activation ranges learned (LSQ)", _learnable_ranges(student))
        return student

    def losses(self, student, teacher, args, target: torch.Tensor, taps=(None, None)) -> dict[str, torch.Tensor]:
        """The loss terms of one batch of UNet arguments ``args`` and their denoising ``target``,
        and ``loss``, their weighted sum; ``taps``: the student's and the teacher's ``_Taps``
        for feature distillation. With ``guidance``, ``args`` is one example's CFG pair
        (empty caption first) and distillation compares the guided outputs."""
        with torch.no_grad():
            o_t = teacher(*args)
        o_s = student(*args)
        if self.guidance:  # the pair's guided output, as the sampler combines it
            kd = F.mse_loss(guided(o_s, self.guidance), guided(o_t, self.guidance))
        else:
            kd = F.mse_loss(o_s, o_t)
        terms = {"denoise": F.mse_loss(o_s, target), "kd": kd}
        loss = self.denoise_weight * terms["denoise"] + self.kd_weight * terms["kd"]
        if taps[0] is not None:
            terms["feature_kd"] = _feature_loss(taps[0].values, taps[1].values)
            loss = loss + self.feature_kd_weight * terms["feature_kd"]
        return {"loss": loss, **terms}

    def _noised_batch(self, latents, states, empty, noise_scheduler, rng, generator) -> tuple[tuple, torch.Tensor]:
        """One micro-batch of UNet arguments (training latents noised at drawn timesteps) and its
        denoising target. With ``guidance``, one example as the sampler runs it: its empty caption,
        then its own."""
        T = noise_scheduler.config.num_train_timesteps
        if self.guidance:
            idx = torch.from_numpy(rng.integers(0, len(latents), size=1)).repeat(BATCH)
            text = torch.cat([empty, states[idx[:1]]])
            noise = torch.randn((1, *latents.shape[1:]), generator=generator).expand(BATCH, -1, -1, -1)
            t = _draw_timesteps(self.timesteps, 1, rng, T).repeat(BATCH)
        else:
            idx = torch.from_numpy(rng.integers(0, len(latents), size=BATCH))
            dropped = torch.from_numpy(rng.random(BATCH) < self.caption_dropout)
            text = torch.where(dropped[:, None, None], empty.expand(BATCH, -1, -1), states[idx])
            noise = torch.randn((BATCH, *latents.shape[1:]), generator=generator)
            t = _draw_timesteps(self.timesteps, BATCH, rng, T)
        z0 = latents[idx]
        zt = noise_scheduler.add_noise(z0, noise, t)
        if noise_scheduler.config.prediction_type == "epsilon":
            return (zt, t.float(), text), noise
        return (zt, t.float(), text), noise_scheduler.get_velocity(z0, noise, t)

    def _rollout_terms(self, student, steps, trajectories, states, empty, rng) -> dict[str, torch.Tensor]:
        """The loss of ``rollout`` sampler steps of the student from a drawn point of a drawn
        teacher trajectory, against where that trajectory went."""
        j = int(rng.integers(0, len(trajectories)))
        first = int(rng.integers(0, len(steps.timesteps) - self.rollout + 1))
        text = torch.cat([empty, states[j : j + 1]])
        landed = roll_out(student, steps, trajectories[j, first : first + 1], first, self.rollout, text, self.guidance)
        kd = F.mse_loss(landed, trajectories[j, first + self.rollout : first + self.rollout + 1])
        return {"loss": self.kd_weight * kd, "kd": kd}

    def train(self, graph: torch.fx.GraphModule, fallback: Sequence[str], calibration, pipe) -> torch.fx.GraphModule:
        """The fake-quantized student of ``graph`` (FP32 teacher), trained; ``calibration`` (UNet
        inputs) starts its activation ranges unless ``init_from_calibration`` is off."""
        from diffusers import DDPMScheduler

        if pipe.unet.config.get("addition_embed_type"):
            raise ValueError("qat supports SD 1.x and 2.x UNets; this one takes added conditions (SDXL)")
        rng = np.random.default_rng(self.seed)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

        # 1. training latents (or, for rollouts, the teacher's trajectories) and their captions'
        # text states, computed once
        start = time.perf_counter()
        empty = embed(pipe, [""])
        if self.rollout:
            ddim = sampler(pipe, self.rollout_sampler_steps)
            captions = self.data.captions(self.data_size)
            states = embed(pipe, captions)
            latents = teacher_trajectories(pipe, captions, ddim, self.guidance, self.seed)
        else:
            latents, captions = self.data.latents(pipe, self.data_size)
            states = embed(pipe, captions)
        data_seconds = time.perf_counter() - start
        log.info("qat: %d training %s (%s) in %.0f s", len(latents), "trajectories" if self.rollout else "latents",
                 self.data.description, data_seconds)  # fmt: skip

        # 2. the student
        student = self.make_student(graph, fallback, calibration)
        params = trainable(student, self.train_weights)
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, self.warmup, self.train_steps))
        ema = [p.detach().clone() for p in params] if self.ema else None

        # 3. the run: afresh, or from the checkpoint in ``work``
        generator = torch.Generator().manual_seed(self.seed)
        state = TrainingState(student, optimizer, scheduler, ema, rng, generator)
        run = TrainingRun("qat", state, self.work, total=self.train_steps, checkpoint_every=self.checkpoint_every,
                          resume=self.resume, config=self.recipe()["training"])  # fmt: skip

        # 4. the loop. The student keeps the exported graph's inference semantics, as the teacher
        # does: a UNet has no batch norm, and torchao's move_exported_model_to_train would turn
        # every dropout of the graph, p = 0 included, into dropout with p = 0.5.
        teacher, teacher_taps, student_taps = graph, None, None
        if self.feature_kd_weight:
            nodes = [_last_node_of(graph, block) for block in _blocks(pipe.unet)]
            teacher = copy.deepcopy(graph)
            teacher_taps, student_taps = _Taps().add(teacher, nodes), _Taps().add(student, nodes)
        micro = self.batch // BATCH
        for step in range(run.first, self.train_steps):
            optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for _ in range(micro):
                if self.rollout:
                    terms = self._rollout_terms(student, ddim, latents, states, empty, rng)
                else:
                    batch = self._noised_batch(latents, states, empty, noise_scheduler, rng, generator)
                    terms = self.losses(student, teacher, *batch, (student_taps, teacher_taps))
                (terms["loss"] / micro).backward()
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + v.item() / micro
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - self.ema)
            values = {**{k: round(v, 7) for k, v in totals.items()}, "lr": scheduler.get_last_lr()[0]}
            run.step(step + 1, values)

        if ema is not None:
            with torch.no_grad():
                for p, e in zip(params, ema):
                    p.copy_(e)
        if student_taps is not None:
            student_taps.remove(student)
        for p in params:
            p.requires_grad_(False)
        self.summary = run.summary(data_seconds=round(data_seconds, 1))
        return student
