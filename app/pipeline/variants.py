"""UNet variants: one callable per precision name, all with the same signature.

``fp32`` and ``bf16`` are built from the pipeline's UNet (eager, or compiled with
Inductor and freezing); any other name is a prequantized artifact under
``<model>/quantized/<name>/``, loaded by ``quantization.runtime`` as its manifest's
method says. The
denoising loop only ever sees the ``UNetVariant`` protocol, so a new variant never
touches it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from kernels.attention import use_fused_attention
from kernels.group_norm import use_fused_group_norm

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: In a list of precisions: every artifact the model folder has.
ALL_ARTIFACTS = "*"


class EagerUNet:
    """The diffusers UNet in one dtype, optionally ``torch.compile``d (frozen weights).

    With ``in_place`` it converts ``unet`` itself rather than a copy of it. In BF16 its
    attention runs ``kernels``' attention op unless ``fused_attention`` is off (fused
    kernels, in AMX tiles where the CPU has AMX, faster than SDPA at SD 1.5's sizes:
    docs/KERNELS.md, "Measured"), and uncompiled, its
    GroupNorms (with the SiLUs after them) ``kernels``' GroupNorm unless
    ``fused_group_norm`` is off (``bench/group_norm.py``; compiled, Inductor fuses them).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        precision: str,
        *,
        compile: bool = False,
        in_place: bool = False,
        fused_attention: bool = True,
        fused_group_norm: bool = True,
    ):
        self.precision = precision
        self.dtype = _DTYPES[precision]
        if self.dtype == unet.dtype:
            self.unet = unet
        else:
            self.unet = unet.to(self.dtype) if in_place else copy.deepcopy(unet).to(self.dtype)
        self.unet.eval().requires_grad_(False)
        if fused_attention and self.dtype == torch.bfloat16:
            use_fused_attention(self.unet)
        if fused_group_norm and self.dtype == torch.bfloat16 and not compile:
            use_fused_group_norm(self.unet)
        if compile:
            torch._inductor.config.freezing = True  # constant-fold and prepack weights for oneDNN
            self.forward = torch.compile(self.unet)
        else:
            # oneDNN's convolutions run channels-last natively: an eager BF16 step takes less time
            # than with NCHW (docs/notes/quantization-history.md, "Intel Xeon with AMX"). Inductor
            # picks its own layouts when compiled.
            self.forward = self.unet.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        cast = self.dtype
        if added_cond_kwargs is not None:
            added_cond_kwargs = {k: v.to(cast) for k, v in added_cond_kwargs.items()}
        out = self.forward(
            sample.to(cast),
            timestep,
            encoder_hidden_states=encoder_hidden_states.to(cast),
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )[0]
        return out.float()


def build_variants(
    pipe, names: list[str], *, compile: bool = False, fused_attention: bool = True, model_dir: Path | None = None
):
    """``(variants, unavailable)``: the variants built, in the order of ``names``, and for
    each name that could not be, the reason (a missing or refused artifact, an unknown name);
    an artifact of the model folder that ``names`` leave out is listed as unavailable too.
    ``fused_attention``: the BF16 UNet's (artifacts have theirs built in).

    When ``fp32`` is not among ``names``, nothing needs the pipeline's FP32 UNet once the
    artifacts are checked against it: ``bf16`` then converts it in place instead of
    keeping a copy beside it, so a worker holds one UNet's weights less
    (docs/notes/quantization-history.md, "Start-up and memory"); with neither ``fp32`` nor
    ``bf16`` (a BF16 artifact and INT8 ones), its weights are dropped.
    """
    asked = ", ".join(names)
    names = expand(names, model_dir)
    built, unavailable = {}, {}
    artifacts_first = sorted(names, key=lambda name: name in _DTYPES)  # they check the FP32 weights
    for name in artifacts_first:
        if name in _DTYPES:
            in_place = name != "fp32" and "fp32" not in names
            built[name] = EagerUNet(
                pipe.unet, name, compile=compile, in_place=in_place, fused_attention=fused_attention
            )
        else:
            reason = _artifact(pipe, name, model_dir, built)
            if reason:
                unavailable[name] = reason
    if not any(name in _DTYPES for name in built):
        # artifacts alone: the FP32 UNet was needed for their fingerprints only; its config stays
        pipe.unet.to("meta")
    for name, reason in unavailable.items():
        log.warning("precision %s unavailable: %s", name, reason)
    for name in expand([ALL_ARTIFACTS], model_dir):
        if name not in names:
            unavailable[name] = f"not loaded: the precisions to load are {asked}; add {name!r}, or '*' for all"
    return {name: built[name] for name in names if name in built}, unavailable


def offered(model_dir: Path | None) -> list[str]:
    """Every precision a model can offer: fp32, bf16 and the artifacts of its folder."""
    return [*_DTYPES, *expand([ALL_ARTIFACTS], model_dir)]


def expand(names: list[str], model_dir: Path | None) -> list[str]:
    """``names`` with ``*`` replaced by the names of the artifacts under ``<model_dir>/quantized/``
    (sorted; none for a pipeline not from a folder), each name once."""
    out: list[str] = []
    for name in names:
        if name == ALL_ARTIFACTS:
            folder = model_dir / "quantized" if model_dir is not None else None
            found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder and folder.is_dir() else []
            out += [n for n in found if n not in names and n not in out]
        elif name not in out:
            out.append(name)
    return out


def _artifact(pipe, name: str, model_dir: Path | None, variants: dict) -> str | None:
    """Load the artifact ``name`` into ``variants``; else why it cannot be."""
    if model_dir is None:
        return f"unknown precision {name!r}: fp32, bf16, or an artifact of a model folder on disk"
    path = model_dir / "quantized" / name
    if not path.is_dir():
        return (
            f"unknown precision {name!r}: fp32, bf16, or an artifact under {model_dir / 'quantized'} "
            f"(make one with: mixdiff quantize ptq --model {model_dir} --out {name})"
        )
    from quantization.runtime import ArtifactError, load_variant

    try:
        variants[name] = load_variant(path, pipe)
    except ArtifactError as exc:
        return f"artifact {path} refused: {exc}"
    return None
