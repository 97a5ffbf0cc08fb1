"""Train the embedded default model from scratch: ``python -m shapes.train pipeline``.

The recipe, in order (every number is a flag; the defaults are the shipped model's):

1. ``vae``: the VAE alone, to reconstruct data-set images (L1 + L2, a tiny KL term); its
   latent scaling factor, measured as 1 / std of the latents of held-out images; then its
   decoder fine-tuned on the frozen encoder's posterior samples (the latent space does
   not move), as SD's ft-MSE decoder was made;
2. ``denoiser``: the latents of a fixed pool of data-set images, encoded once by that VAE;
   the text encoder first, alone, taught to carry every attribute a caption names, then
   frozen; the UNet on its features, on the v-prediction denoising loss (SD 2.x's,
   min-SNR weighted) over SD's noise schedule rescaled to zero terminal SNR, a caption
   form drawn afresh for every sample and dropped for 10% of them so that
   classifier-free guidance works; EMA of the UNet; then the diffusers folder
   (safetensors) with a DDIM sampler over the same schedule, starting at its last timestep.

``denoiser --init DIR`` continues a trained pipeline instead: its UNet trains on (a fresh
warm-up and cosine decay, usually at a lower rate and another seed) and its text encoder
is kept as it is. The shipped UNet is stage 2 continued this way (the model card gives the
commands).

``tiny-decoder --model DIR`` distills a finished pipeline's VAE decoder into a tiny one (TAESD's
``AutoencoderTiny``) for fast previews and few-step sampling: trained to draw what the full decoder
draws from the same latents, written to ``DIR/vae_tiny`` with its fidelity and decode times.

``pipeline`` runs the first two stages. Training runs under bf16 autocast with fp32 master weights (AMX
makes bf16 much faster than fp32 on Xeon CPUs); every random draw comes from the seeds below.
The yardstick classifier has its own subcommand: ``python -m shapes.train yardstick``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor

from common.training import lr_factor
from shapes import architecture, dataset, metrics

#: Data-set seeds of each stage, so no stage trains on another's held-out images.
VAE_SEED, SCALE_SEED, POOL_SEED, DECODER_SEED, TEXT_SEED, TINY_SEED, TINY_HELD_OUT_SEED = 1, 2, 3, 4, 5, 6, 7
#: What the text encoder learns to read from a caption, per object (two at most), then the background.
TEXT_TARGETS = {"shape": dataset.SHAPES, "color": dataset.COLOR_NAMES, "size": dataset.SIZES, "position": dataset.POSITIONS}


def _math_attention(model) -> None:
    """Plain matmul-softmax attention: on CPU its bf16 backward is faster than SDPA's flash kernel."""
    model.set_attn_processor(AttnProcessor())


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


class _Optimizer:
    """AdamW with linear warm-up (a twentieth of the steps unless given) and cosine decay;
    each step clips the gradients to norm 1."""

    def __init__(self, params, *, lr: float, steps: int, warmup: int | None = None, **adamw):
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, **adamw)
        warmup = steps // 20 + 1 if warmup is None else warmup
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_factor(step, warmup, steps))

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1], as SD's VAE expects."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class _Log:
    """Progress every ``every`` steps: time since the start, the values given, and the stage's ETA
    (its mean step time since its first step, times the steps left)."""

    def __init__(self, every: int):
        self.every, self.start, self.stage_starts = every, time.time(), {}

    def __call__(self, stage: str, step: int, total: int, **values: float) -> None:
        now = time.time()
        first_step, first_time = self.stage_starts.setdefault(stage, (step, now))
        if step % self.every == 0 or step == total:
            shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
            eta = (now - first_time) / max(1, step - first_step) * (total - step)
            print(f"[{now - self.start:7.0f}s] {stage} {step}/{total} {shown} eta {eta / 60:.1f} min", flush=True)


def _l1_l2(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reconstruction loss of every stage that draws images: L1 (sharp edges) + L2 (no large errors)."""
    return F.l1_loss(output, target) + F.mse_loss(output, target)


def _posterior_sample(vae, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A sample (unscaled) of the frozen encoder's posterior of ``x``, drawn from ``gen``."""
    with torch.no_grad(), _autocast(x.device):
        posterior = vae.encode(x).latent_dist
    return posterior.mean.float() + posterior.std.float() * torch.randn(
        posterior.mean.shape, generator=gen, device=x.device
    )


def train_vae(vae, args, device, log) -> None:
    opt = _Optimizer(vae.parameters(), lr=args.vae_lr, steps=args.vae_steps, weight_decay=0.0)
    vae.train()
    for step in range(1, args.vae_steps + 1):
        start = (step - 1) * args.vae_batch
        x = _to_tensor(dataset.images(range(start, start + args.vae_batch), VAE_SEED), device)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        rec = _l1_l2(recon, x)
        kl = posterior.kl().mean() / (x[0].numel())
        loss = rec + args.vae_kl * kl
        opt.step(loss)
        log("vae", step, args.vae_steps, rec=rec.item(), kl=kl.item())
    vae.eval()


def finetune_decoder(vae, args, device, log) -> None:
    """Sharpen the decoder on the frozen encoder's latents, as SD's ft-MSE decoder was made.

    The latent space the denoiser learns does not move, so this runs alongside the
    denoiser's training. Latents are posterior samples, so the decoder also learns to
    draw clean shapes from slightly-off latents, as generated ones are. Its random
    draws come from its own generator, leaving the denoiser's untouched.
    """
    gen = torch.Generator(device).manual_seed(args.seed + DECODER_SEED)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = _Optimizer(decoder, lr=args.decoder_lr, steps=args.decoder_steps, weight_decay=0.0)
    vae.decoder.train()
    for step in range(1, args.decoder_steps + 1):
        start = (step - 1) * args.vae_batch
        x = _to_tensor(dataset.images(range(start, start + args.vae_batch), DECODER_SEED), device)
        z = _posterior_sample(vae, x, gen)
        with _autocast(device):
            recon = vae.decode(z).sample.float()
        loss = _l1_l2(recon, x)
        opt.step(loss)
        log("decoder", step, args.decoder_steps, rec=loss.item())
    vae.eval()


@torch.no_grad()
def encode(vae, images: np.ndarray, device, batch: int = 256) -> torch.Tensor:
    """Latent means (unscaled) of ``images``."""
    out = []
    for i in range(0, len(images), batch):
        with _autocast(device):
            out.append(vae.encode(_to_tensor(images[i : i + batch], device)).latent_dist.mean.float())
    return torch.cat(out)


class _Tokens:
    """Token ids of captions, padded as the pipeline pads them; each caption tokenized once."""

    def __init__(self, tokenizer, device: torch.device):
        self.tokenizer, self.device, self.cache = tokenizer, device, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions]).to(self.device)


def caption_labels(text: str) -> list[int]:
    """Class indices of what ``text`` names, per ``TEXT_TARGETS`` of each of two objects, then the
    background; the last class of each target means "not named"."""
    objects, background = dataset.parse(text)
    labels = []
    for k in range(2):
        obj = objects[k] if k < len(objects) else {}
        labels += [values.index(obj[a]) if a in obj else len(values) for a, values in TEXT_TARGETS.items()]
    return labels + [dataset.COLOR_NAMES.index(background) if background else len(dataset.COLOR_NAMES)]


def pretrain_text_encoder(text_encoder, tokens: _Tokens, args, device, log) -> float:
    """Teach the text encoder to read captions before the UNet sees it, then freeze it.

    SD conditions on a pretrained, frozen CLIP text encoder; trained jointly from scratch
    with the UNet, ours learned colors but not positions or shapes (cross-attention stayed
    uniform and those words never reached the UNet). Here linear heads read every
    attribute a caption names from the mean of its token features (what an attention
    layer that has not yet learned where to look reads), on data-set captions and 10%
    empty ones. Returns the share of held-out captions read entirely right.
    """
    sizes = [len(v) + 1 for _ in range(2) for v in TEXT_TARGETS.values()] + [len(dataset.COLOR_NAMES) + 1]
    heads = torch.nn.Linear(architecture.TEXT_WIDTH, sum(sizes)).to(device)
    opt = _Optimizer(
        [*text_encoder.parameters(), *heads.parameters()], lr=args.text_lr, steps=args.text_steps, weight_decay=0.01
    )
    rng = np.random.default_rng(args.seed + TEXT_SEED)

    def batch(n: int) -> tuple[list[str], torch.Tensor]:
        captions = [
            "" if rng.random() < args.caption_dropout else dataset.caption(dataset.scene(int(i), TEXT_SEED), rng)
            for i in rng.integers(1 << 30, size=n)
        ]
        return captions, torch.tensor([caption_labels(c) for c in captions], device=device)

    def logits(captions: list[str]) -> list[torch.Tensor]:
        with _autocast(device):
            features = text_encoder(tokens(captions))[0].mean(dim=1)
        return heads(features.float()).split(sizes, dim=1)

    text_encoder.train()
    for step in range(1, args.text_steps + 1):
        captions, labels = batch(args.text_batch)
        loss = sum(F.cross_entropy(out, labels[:, j]) for j, out in enumerate(logits(captions)))
        opt.step(loss)
        log("text", step, args.text_steps, loss=loss.item())
    text_encoder.eval().requires_grad_(False)
    captions, labels = batch(2048)
    with torch.no_grad():
        read = torch.stack([out.argmax(dim=1) for out in logits(captions)], dim=1)
    return float((read == labels).all(dim=1).float().mean())


def train_denoiser(unet, text_encoder, tokens: _Tokens, latents, scenes, args, device, log, checkpoint):
    """The UNet on the frozen text encoder's features; returns its EMA copy. ``checkpoint(ema_unet)``
    runs every ``args.checkpoint_every`` steps."""
    noise_scheduler = architecture.training_scheduler()
    alphas = noise_scheduler.alphas_cumprod.to(device)
    opt = _Optimizer(
        unet.parameters(), lr=args.lr, steps=args.steps, warmup=args.warmup, betas=(0.9, 0.99), weight_decay=0.01
    )
    ema_unet = copy.deepcopy(unet).eval()
    ema_params = list(ema_unet.parameters())
    rng = np.random.default_rng(args.seed)

    def denoising_loss(zt, t, target, ids, weight):
        with _autocast(device):
            with torch.no_grad():
                hidden = text_encoder(ids)[0]
            pred = unet(zt, t, encoder_hidden_states=hidden).sample
        return (weight * F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))).mean()

    if args.compile:
        denoising_loss = torch.compile(denoising_loss)
    unet.train()
    for step in range(1, (args.stop_after or args.steps) + 1):
        idx = rng.integers(len(latents), size=args.batch)
        captions = [
            "" if rng.random() < args.caption_dropout else dataset.caption(scenes[i], rng) for i in idx
        ]
        z0 = latents[torch.from_numpy(idx)].to(device)
        noise = torch.randn(z0.shape, device=device)
        t = torch.from_numpy(rng.integers(0, noise_scheduler.config.num_train_timesteps, size=args.batch)).to(device)
        zt = noise_scheduler.add_noise(z0, noise, t)
        target = noise_scheduler.get_velocity(z0, noise, t)
        # min-SNR-gamma in its v-prediction form with SNR + 1 (so that the zero-SNR last timestep keeps its
        # weight): the x0 error is weighted min(SNR + 1, gamma), capping the nearly clean timesteps.
        snr_plus_one = 1 / (1 - alphas[t])
        weight = torch.clamp(snr_plus_one, max=args.snr_gamma) / snr_plus_one
        loss = denoising_loss(zt, t, target, tokens(captions), weight)
        opt.step(loss)
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, opt.params, 1 - decay)
        log("denoiser", step, args.steps, loss=loss.item(), lr=opt.lr)
        if step % args.checkpoint_every == 0 and step < (args.stop_after or args.steps):
            checkpoint(ema_unet)
    return ema_unet


def export(out: Path, vae, text_encoder, tokenizer, unet, tokenizer_dir: Path) -> None:
    """The diffusers folder; the tokenizer in CLIP's vocab.json/merges.txt form, as written for training."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=architecture.sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tokenizer_dir, out / "tokenizer")


def _reconstruction_psnr(vae, images: np.ndarray, device) -> float:
    """PSNR (dB) of ``images`` through the VAE (latent means), on the [0, 1] scale."""
    x = _to_tensor(images, device)
    with torch.no_grad(), _autocast(device):
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
    return float(-10 * torch.log10(F.mse_loss(recon.clamp(-1, 1) / 2, x / 2)))


#: The tiny decoder (TAESD's ``AutoencoderTiny``, as diffusers builds it) at this model's scale: three levels of
#: ``TINY_WIDTH`` channels with two x2 upsamplings between them (16x16x4 latents -> 64x64x3 px), holding
#: ``TINY_BLOCKS`` blocks of three plain 3x3 convolutions and ReLUs; no normalization and no attention, where the
#: full decoder spends much of its time at this size. ``DecoderTiny`` keeps one width throughout, and at 64x64 px
#: the width costs most, so it is the full decoder's width there (16). The models/mixdiff-shapes README has its
#: decode times against the full decoder's.
TINY_WIDTH, TINY_BLOCKS = 16, (3, 3, 1)


def tiny_autoencoder() -> AutoencoderTiny:
    """An untrained tiny autoencoder whose decoder ``tiny-decoder`` trains.

    As TAESD in diffusers: ``scaling_factor`` 1, because it decodes the latents the UNet sees (the VAE's,
    times the VAE's scaling factor), and its images are in [-1, 1] as the VAE's. Only the decoder is
    trained and used; the encoder, which ``AutoencoderTiny`` must have, is the smallest of the right shape
    (x4 down to 4 channels, no blocks) and stays untrained.
    """
    return AutoencoderTiny(
        encoder_block_out_channels=(TINY_WIDTH,) * 3,
        num_encoder_blocks=(0, 0, 0),
        decoder_block_out_channels=(TINY_WIDTH,) * 3,
        num_decoder_blocks=TINY_BLOCKS,
        upsampling_scaling_factor=2,
        latent_channels=architecture.LATENT_CHANNELS,
        scaling_factor=1.0,
    )


def distill_tiny_decoder(tiny, vae, args, device, log) -> list[float]:
    """Train ``tiny``'s decoder to draw what the frozen ``vae`` draws from the same latents; returns the losses.

    Its inputs are posterior samples of data-set images times the VAE's scaling factor (the latents as the
    UNet sees them), so it also learns the slightly-off latents a sampler ends on; its target is the full
    decoder's image of the same latents, clamped to what an image can show ([-1, 1]): the tiny decoder
    imitates the full one, not the data set. ``args.image_weight`` adds the same loss against the original
    image. Its random draws come from a generator of its own.
    """
    gen = torch.Generator(device).manual_seed(args.seed + TINY_SEED)
    opt = _Optimizer(tiny.decoder.parameters(), lr=args.lr, steps=args.steps, weight_decay=0.0)
    scaling_factor = vae.config.scaling_factor
    losses = []
    tiny.decoder.train()
    for step in range(1, args.steps + 1):
        start = (step - 1) * args.batch
        x = _to_tensor(dataset.images(range(start, start + args.batch), TINY_SEED), device)
        z = _posterior_sample(vae, x, gen)
        with torch.no_grad(), _autocast(device):
            target = vae.decode(z).sample.float().clamp(-1, 1)
        with _autocast(device):
            drawn = tiny.decode(z * scaling_factor).sample.float()
        loss = _l1_l2(drawn, target)
        if args.image_weight:
            loss = loss + args.image_weight * _l1_l2(drawn, x)
        opt.step(loss)
        losses.append(loss.item())
        log("tiny-decoder", step, args.steps, loss=loss.item(), lr=opt.lr)
    tiny.eval()
    return losses


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Decoded (n, 3, h, w) in [-1, 1] -> uint8 (n, h, w, 3), rounded as the pipeline rounds its images."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _mean(values) -> float:
    """The mean of ``values``, rounded as the summaries write it."""
    return round(float(np.mean(list(values))), 4)


@torch.no_grad()
def decoder_fidelity(vae, tiny, latents: torch.Tensor, classifier, images: np.ndarray | None = None) -> dict:
    """How close ``tiny``'s images of the UNet-scale ``latents`` come to the full VAE's, both in fp32: mean PSNR
    (dB) and SSIM, and the share of images the yardstick ``classifier`` reads exactly as their full decode
    (every attribute). Given the ``images`` the latents encode, also each decoder's PSNR against them."""
    from shapes import yardstick

    full = _to_uint8(vae.decode(latents / vae.config.scaling_factor).sample)
    small = _to_uint8(tiny.decode(latents).sample)
    result = {
        "images": len(latents),
        "psnr_db": _mean(map(metrics.psnr, small, full)),
        "ssim": _mean(map(metrics.ssim, small, full)),
        "reading_agreement": round(
            metrics.reading_agreement(yardstick.read(classifier, small), yardstick.read(classifier, full)), 4
        ),
    }
    if images is not None:
        result["tiny_psnr_db_vs_images"] = _mean(map(metrics.psnr, small, images))
        result["full_psnr_db_vs_images"] = _mean(map(metrics.psnr, full, images))
    return result


@torch.no_grad()
def generated_latents(pipe, args) -> torch.Tensor:
    """The latents (UNet scale) the pipeline ends on for one-object data-set prompts: what a decoder is served."""
    prompts = [p.text for p in dataset.prompts(args.eval_prompts, TINY_HELD_OUT_SEED)]
    return pipe(
        prompts,
        num_inference_steps=args.eval_steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="latent",
    ).images


def decode_times(models: dict, reps: int, warmup: int = 3) -> dict:
    """Median milliseconds of one decode of a batch of 1 and of 8 random latents, per model, in fp32 and in bf16
    channels-last (as the server decodes). The models take turns, so a busy machine slows them alike."""
    times: dict = {name: {} for name in models}
    latent = (architecture.LATENT_CHANNELS, dataset.SIZE // 4, dataset.SIZE // 4)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        converted = {name: copy.deepcopy(m).to(dtype, memory_format=torch.channels_last) for name, m in models.items()}
        for batch in (1, 8):
            z = torch.randn(batch, *latent).to(dtype, memory_format=torch.channels_last)
            seconds: dict = {name: [] for name in models}
            with torch.inference_mode():
                for rep in range(warmup + reps):
                    for name, model in converted.items():
                        t0 = time.perf_counter()
                        model.decode(z)
                        if rep >= warmup:
                            seconds[name].append(time.perf_counter() - t0)
            for name, s in seconds.items():
                times[name].setdefault(precision, {})[f"batch_{batch}"] = round(1e3 * statistics.median(s), 3)
    return times


def _runtime(args) -> tuple[torch.device, _Log]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device), _Log(args.log_every)


def _start(args) -> tuple[torch.device, _Log, Path]:
    device, log = _runtime(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    return device, log, work


def _recipe(args) -> dict:
    """The flags that make the result (not where it is read from or written to)."""
    paths = ("func", "out", "work", "device", "vae", "model", "yardstick")
    return {k: v for k, v in vars(args).items() if k not in paths}


def _summary(path: Path, args, **values) -> None:
    summary = {
        "recipe": _recipe(args),
        "device": args.device,
        **{k: round(v, 4) for k, v in values.items()},
    }
    path.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


def vae_command(args) -> int:
    """Stage 1: the VAE, its scaling factor and its fine-tuned decoder, written to ``--vae``."""
    device, log, work = _start(args)
    t0 = time.time()
    vae = architecture.vae().to(device)
    _math_attention(vae)
    train_vae(vae, args, device, log)
    vae.requires_grad_(False)
    vae_seconds = time.time() - t0

    held_out = dataset.images(range(args.scale_images), SCALE_SEED)
    scaling_factor = float(1.0 / encode(vae, held_out, device).std())
    vae.register_to_config(scaling_factor=scaling_factor)
    psnr = _reconstruction_psnr(vae, held_out[:256], device)
    print(f"latent scaling factor {scaling_factor:.4f}; VAE reconstruction PSNR {psnr:.2f} dB", flush=True)

    t1 = time.time()
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    finetune_decoder(vae, args, device, log)
    decoder_seconds = time.time() - t1
    vae.requires_grad_(False)
    decoder_psnr = _reconstruction_psnr(vae, held_out[:256], device)
    vae.cpu().save_pretrained(args.vae, safe_serialization=True)
    _summary(
        work / "vae-summary.json",
        args,
        scaling_factor=scaling_factor,
        vae_psnr_db=psnr,
        decoder_psnr_db=decoder_psnr,
        vae_seconds=vae_seconds,
        decoder_seconds=decoder_seconds,
    )
    return 0


def denoiser_command(args) -> int:
    """Stage 2: the text encoder, then the UNet on the latents of the VAE in ``--vae``; the diffusers folder.
    With ``--init``, the UNet of that folder trains on and its text encoder is kept."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    device, log, work = _start(args)
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).to(device).eval()
    vae.requires_grad_(False)
    _math_attention(vae)
    tok = architecture.tokenizer(work / "tokenizer")

    t0 = time.time()
    scenes = [dataset.scene(i, POOL_SEED) for i in range(args.pool)]
    latents = torch.cat(
        [
            encode(vae, np.stack([dataset.render(s) for s in scenes[i : i + 1024]]), device)
            for i in range(0, args.pool, 1024)
        ]
    ).mul(vae.config.scaling_factor).cpu()
    pool_seconds = time.time() - t0

    t1 = time.time()
    tokens = _Tokens(tok, device)
    text = {}
    if args.init:
        # Continuing: the UNet learned this text encoder's features, so it is kept as it is.
        text_encoder = CLIPTextModel.from_pretrained(Path(args.init) / "text_encoder", local_files_only=True)
        text_encoder.to(device).eval().requires_grad_(False)
    else:
        text_encoder = architecture.text_encoder(tok).to(device)
        text["text_accuracy"] = pretrain_text_encoder(text_encoder, tokens, args, device, log)
        text["text_seconds"] = time.time() - t1
        print(f"text encoder reads {100 * text['text_accuracy']:.1f}% of held-out captions entirely right", flush=True)

    t2 = time.time()
    unet = architecture.unet()
    if args.init:
        trained = UNet2DConditionModel.from_pretrained(Path(args.init) / "unet", local_files_only=True)
        unet.load_state_dict(trained.state_dict())
    unet.to(device)
    _math_attention(unet)

    def checkpoint(ema_unet) -> None:
        export(work / "checkpoint", copy.deepcopy(vae).cpu(), copy.deepcopy(text_encoder).cpu(), tok,
               copy.deepcopy(ema_unet).cpu(), work / "tokenizer")

    ema_unet = train_denoiser(unet, text_encoder, tokens, latents, scenes, args, device, log, checkpoint)
    denoiser_seconds = time.time() - t2
    export(Path(args.out), vae.cpu(), text_encoder.cpu(), tok, ema_unet.cpu(), work / "tokenizer")
    _summary(
        work / "denoiser-summary.json",
        args,
        pool_seconds=pool_seconds,
        **text,
        denoiser_seconds=denoiser_seconds,
    )
    return 0


def tiny_decoder_command(args) -> int:
    """Stage 4: ``--model``'s VAE decoder distilled into a tiny one, written with its ``fidelity.json`` (the
    training loss, PSNR/SSIM and yardstick agreement against the full decoder on held-out and on generated
    latents, and decode times of both) to ``--out``, by default ``<model>/vae_tiny``."""
    from shapes import yardstick

    device, log = _runtime(args)
    out = Path(args.out) if args.out else Path(args.model) / "vae_tiny"
    pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.vae.eval().requires_grad_(False)
    _math_attention(vae)
    tiny = tiny_autoencoder()

    t0 = time.time()
    losses = distill_tiny_decoder(tiny.to(device), vae.to(device), args, device, log)
    train_seconds = time.time() - t0
    tiny.cpu().requires_grad_(False).save_pretrained(out, safe_serialization=True)
    vae.cpu()

    classifier = yardstick.load(args.yardstick)
    images = dataset.images(range(args.eval_images), TINY_HELD_OUT_SEED)
    held_out = encode(vae, images, torch.device("cpu")) * vae.config.scaling_factor
    ends = max(1, len(losses) // 10)
    fidelity = {
        "recipe": _recipe(args),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "parameters": {
            "tiny_decoder": sum(p.numel() for p in tiny.decoder.parameters()),
            "full_decoder": sum(p.numel() for p in [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]),
        },
        "train_seconds": round(train_seconds, 1),
        "train_loss": {"first_tenth": _mean(losses[:ends]), "last_tenth": _mean(losses[-ends:])},
        "held_out": decoder_fidelity(vae, tiny, held_out, classifier, images),
        "generated": decoder_fidelity(vae, tiny, generated_latents(pipe, args), classifier),
        "decode_ms": decode_times({"full": vae, "tiny": tiny}, args.timing_reps),
    }
    (out / "fidelity.json").write_text(json.dumps(fidelity, indent=2) + "\n")
    print(json.dumps(fidelity, indent=2), flush=True)
    return 0


def pipeline_command(args) -> int:
    """Both stages, one after the other."""
    return vae_command(args) or denoiser_command(args)


def yardstick_command(args) -> int:
    from shapes import yardstick

    torch.set_num_threads(args.threads)
    classifier, accuracy = yardstick.train(
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, device=torch.device(args.device)
    )
    yardstick.save(classifier, args.out)
    print(json.dumps({"held_out_accuracy": accuracy}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapes.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)

    def runtime(p) -> None:
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--log-every", type=int, default=100)

    def common(p, vae_help: str) -> None:
        p.add_argument("--vae", default="runs/shapes/vae", help=vae_help)
        p.add_argument("--work", default="runs/shapes", help="folder for the tokenizer draft, checkpoints, summaries")
        runtime(p)

    def vae_flags(p) -> None:
        p.add_argument("--vae-steps", type=int, default=800)
        p.add_argument("--vae-batch", type=int, default=32)
        p.add_argument("--vae-lr", type=float, default=2e-3)
        p.add_argument("--vae-kl", type=float, default=1e-4, help="weight of the KL term (per pixel value)")
        p.add_argument("--decoder-steps", type=int, default=2000, help="decoder fine-tuning steps (frozen encoder)")
        p.add_argument("--decoder-lr", type=float, default=1e-3)
        p.add_argument("--scale-images", type=int, default=2048, help="held-out images that measure the scaling factor")

    def denoiser_flags(p) -> None:
        p.add_argument("--out", default="models/mixdiff-shapes", help="diffusers folder to write")
        p.add_argument(
            "--init",
            default=None,
            help="continue from this pipeline folder: its UNet trains on, its text encoder is kept as it is "
            "(--vae must be the VAE it was trained with)",
        )
        p.add_argument("--pool", type=int, default=40000, help="data-set images whose latents the denoiser trains on")
        p.add_argument("--text-steps", type=int, default=1000, help="text encoder pretraining steps")
        p.add_argument("--text-batch", type=int, default=128)
        p.add_argument("--text-lr", type=float, default=1e-3)
        p.add_argument("--steps", type=int, default=9000, help="denoiser optimizer steps")
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--lr", type=float, default=8e-4)
        p.add_argument("--warmup", type=int, default=200)
        p.add_argument(
            "--stop-after",
            type=int,
            default=None,
            help="end after this many steps of the --steps schedule (its learning rate still decays over --steps)",
        )
        p.add_argument("--ema", type=float, default=0.999)
        p.add_argument("--snr-gamma", type=float, default=5.0)
        p.add_argument("--caption-dropout", type=float, default=0.1)
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="torch.compile the loss (minutes once, then faster steps; "
                       "models/mixdiff-shapes/README.md has the figures)")
        p.add_argument("--checkpoint-every", type=int, default=500, help="write the EMA pipeline to <work>/checkpoint")

    v = sub.add_parser("vae", help="stage 1: train the VAE and fine-tune its decoder")
    common(v, "VAE folder to write")
    vae_flags(v)
    v.set_defaults(func=vae_command)

    d = sub.add_parser("denoiser", help="stage 2: train UNet and text encoder on a VAE's latents; write the pipeline")
    common(d, "VAE folder to encode with and to ship")
    denoiser_flags(d)
    d.set_defaults(func=denoiser_command)

    p = sub.add_parser("pipeline", help="both stages: the whole diffusers folder from scratch")
    common(p, "VAE folder written by stage 1")
    vae_flags(p)
    denoiser_flags(p)
    p.set_defaults(func=pipeline_command)

    t = sub.add_parser("tiny-decoder", help="stage 4: distill a pipeline's VAE decoder into a tiny one (TAESD's)")
    t.add_argument("--model", default="models/mixdiff-shapes", help="pipeline folder whose VAE decoder is distilled")
    t.add_argument("--out", default=None, help="folder to write (default: <model>/vae_tiny)")
    runtime(t)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--image-weight", type=float, default=0.0,
                   help="weight of the same L1 + L2 loss against the original image (0: the full decoder's only)")
    t.add_argument("--eval-images", type=int, default=256, help="held-out data-set images whose latents it decodes")
    t.add_argument("--eval-prompts", type=int, default=32, help="prompts whose generated latents it decodes")
    t.add_argument("--eval-steps", type=int, default=50, help="DDIM steps of those generations")
    t.add_argument("--guidance-scale", type=float, default=5.0)
    t.add_argument("--yardstick", default="models/shapes-yardstick", help="classifier whose readings are compared")
    t.add_argument("--timing-reps", type=int, default=100, help="timed decodes per model, precision and batch")
    t.set_defaults(func=tiny_decoder_command)

    y = sub.add_parser("yardstick", help="train the classifier that reads generated images")
    y.add_argument("--out", default="models/shapes-yardstick")
    y.add_argument("--device", default="cpu")
    y.add_argument("--threads", type=int, default=1)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--steps", type=int, default=1500)
    y.add_argument("--batch", type=int, default=64)
    y.add_argument("--lr", type=float, default=2e-3)
    y.set_defaults(func=yardstick_command)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
