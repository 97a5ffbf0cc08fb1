"""Serving a prequantized artifact: verify it, load its packages, run it as a UNet variant.

An artifact is a folder ``<model>/quantized/<name>/``: per timestep group, an
AOTInductor package (``unet-g<k>.pt2``, the quantized UNet compiled to a shared library,
so loading is ``dlopen``, not minutes of compilation) and its weights
(``unet-g<k>.safetensors``: the package's constants, 64-byte aligned in one byte array
with a table of where each lies and what it is; INT8 weights already in oneDNN's blocked
layout), and a ``manifest.json`` saying how it was made and what it needs. Its
``method`` chooses the loader (``LOADERS``). A package is only valid with the torch it
was compiled by, on a CPU with the instructions it was compiled for (AVX-512, never AMX:
``portable_isa``), and only for the UNet it was quantized from: ``load_variant`` checks
all of that, and every file's sha256, before it loads anything, and refuses with an
``ArtifactError`` naming what is wrong. A model's tiny decoder has an artifact of the same
make, ``<model>/vae_tiny/int8/`` (one package, ``quantization.decoder``): ``load_decoder``.

This module is all a server needs of ``quantization``: it imports no calibration, export
or build code (``quantization.build`` and the methods write what it reads).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open

import kernels
from quantization.inputs import TimestepGroups, UNetInputs, run_in_batches

MANIFEST = "manifest.json"
#: 4: packages compiled with ``aoti_codegen``'s fix; format 3 packages leak an activation
#: per INT8 linear with a folded residual, on every call.
FORMAT = 4
_REQUIRED = ("method", "runtime", "files", "timestep_groups", "model")
#: The safetensors key of the constants' byte array.
BLOB_KEY = "constants"
#: Where each constant starts in the byte array: a cache line, as AMX and AVX-512 loads want.
ALIGNMENT = 64


log = logging.getLogger(__name__)


class ArtifactError(Exception):
    """A quantized artifact is missing, damaged, or does not fit this runtime, CPU or model."""


@contextlib.contextmanager
def portable_isa():
    """Inductor's CPU code inside the block is built for AVX-512 (with VNNI and BF16 where this
    CPU has them), not for AMX, even on a CPU with AMX.

    AMX only matters to oneDNN, which picks its kernels on the CPU it runs on, and to
    Inductor's GEMM templates, which packages are not built with: code compiled with
    ``-mamx-*`` holds no AMX instruction, yet would be recorded as needing AMX. So a
    package built on a Xeon with AMX runs on any CPU with the same AVX-512 subset (an AMD
    EPYC with AVX-512, a Xeon without AMX), and loads there without an ISA mismatch.
    """
    from torch._inductor import cpu_vec_isa

    original = torch.cpu._is_amx_tile_supported
    torch.cpu._is_amx_tile_supported = lambda: False
    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    try:
        yield
    finally:
        torch.cpu._is_amx_tile_supported = original
        cpu_vec_isa.valid_vec_isa_list.cache_clear()


class _Shim:
    """AOTInductor's C shim in libtorch, for the one thing Python cannot do: wrap bytes that hold
    a prepacked oneDNN tensor as that tensor (as a package's own loader does)."""

    def __init__(self):
        self.lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        for name in ("aoti_torch_device_type_cpu", "aoti_torch_layout__mkldnn"):
            getattr(self.lib, name).restype = ctypes.c_int32
        # a prototype of its own, so that ctypes.pythonapi.PyCapsule_New stays as others may have set it
        prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
        self.capsule_new = prototype(("PyCapsule_New", ctypes.pythonapi))

    def mkldnn_tensor(self, address: int, entry: dict) -> torch.Tensor:
        dtype = getattr(self.lib, f"aoti_torch_dtype_{entry['dtype']}")
        dtype.restype = ctypes.c_int32
        ndim = len(entry["sizes"])
        sizes = (ctypes.c_int64 * ndim)(*entry["sizes"])
        strides = (ctypes.c_int64 * ndim)(*torch.empty(entry["sizes"], device="meta").stride())
        md = bytes.fromhex(entry["mkldnn_md"])
        handle = ctypes.c_void_p()
        error = self.lib.aoti_torch_create_tensor_from_blob_v2(
            ctypes.c_void_p(address), ctypes.c_int64(ndim), sizes, strides, ctypes.c_int64(0), dtype(),
            self.lib.aoti_torch_device_type_cpu(), ctypes.c_int32(0), ctypes.byref(handle),
            self.lib.aoti_torch_layout__mkldnn(), ctypes.c_char_p(md), ctypes.c_int64(len(md)),
        )  # fmt: skip
        if error:
            raise RuntimeError(f"cannot wrap constant {entry['name']} as a oneDNN tensor")
        capsule = self.capsule_new(handle.value, None, None)
        return torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr(capsule)


_MADV_DONTNEED = 4  # Linux's madvise advice: drop the pages, reading them again gives zeros
_MADVISE = getattr(ctypes.CDLL(None, use_errno=True), "madvise", None)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _drop_pages(memory: torch.Tensor) -> None:
    """Hand the whole pages inside ``memory``'s bytes back to the kernel (nothing where the C
    library has no ``madvise``); the bytes read as zeros afterwards. Resident memory only: the
    address range stays reserved."""
    start = -(-memory.data_ptr() // _PAGE) * _PAGE
    end = (memory.data_ptr() + memory.nbytes) // _PAGE * _PAGE
    if _MADVISE is not None and end > start:
        if _MADVISE(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) != 0:
            log.debug("madvise of %d bytes failed: %s", end - start, os.strerror(ctypes.get_errno()))


class Package:
    """A loaded AOTInductor package and the memory its constants live in (it only points there).

    torch 2.13's model container never releases its handles to constants handed to it as user
    managed, so their memory would stay resident after the package is gone
    (docs/notes/quantization-design.md, "Two leaks in AOTInductor"). A package
    dropped hands its constants' pages back to the kernel: nothing runs on them afterwards, so
    hold the package, never its ``runner``, ``constants`` or ``memory`` alone."""

    def __init__(self, runner, memory: torch.Tensor, constants: dict[str, torch.Tensor]):
        self.runner, self.memory, self.constants = runner, memory, constants

    def __call__(self, *args):
        return self.runner(*args)

    def __del__(self) -> None:
        self.runner = self.constants = None
        if not sys.is_finalizing():  # at exit the process gives everything back anyway
            _drop_pages(self.memory)


def load_package(package: Path, weights: Path) -> Package:
    """The runnable AOTInductor model of ``package`` with the constants in ``weights`` handed to it."""
    with safe_open(str(weights), "pt") as f:
        table = json.loads(f.metadata()["table"])
        blob = f.get_tensor(BLOB_KEY)  # memory-mapped
        memory = torch.empty(blob.numel(), dtype=torch.uint8)  # torch allocates 64-byte aligned
        memory.copy_(blob)
        del blob
    if memory.data_ptr() % ALIGNMENT:
        raise RuntimeError(f"constants memory is not {ALIGNMENT}-byte aligned")
    shim, constants = None, {}
    for entry in table:
        address = memory.data_ptr() + entry["offset"]
        if "mkldnn_md" in entry:
            shim = shim or _Shim()
            constants[entry["name"]] = shim.mkldnn_tensor(address, entry)
        else:
            dtype = getattr(torch, entry["dtype"])
            itemsize = dtype.itemsize  # the array's length is a multiple of ALIGNMENT, so it views as any dtype
            constants[entry["name"]] = memory.view(dtype).as_strided(
                entry["sizes"], entry["strides"], entry["offset"] // itemsize + entry["storage_offset"]
            )
    with portable_isa():  # the ISA the package was built for: no mismatch warning on CPUs with AMX
        runner = torch._inductor.aoti_load_package(str(package))
    # by the package's own constant names (``load_constants`` goes by source FQN, which several share)
    runner.loader.update_constant_buffer(constants, False, True, True)  # active buffer, all of them, user-managed
    return Package(runner, memory, constants)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_flags() -> set[str]:
    """The flags /proc/cpuinfo reports (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def weight_layout() -> str:
    """What oneDNN lays prepacked weights out for in this process: ``"amx"`` where it runs AMX
    kernels (a CPU with AMX, not held back by ``ONEDNN_MAX_CPU_ISA``), else ``"avx512"``.

    A package's convolution weights are prepacked as it is built, for the build CPU's
    kernels; on a CPU of the other kind oneDNN lays each of them out again at every call,
    which costs speed, not correctness (``layout_warning``)."""
    flags = cpu_flags()
    if not {"amx_tile", "amx_int8", "amx_bf16"} <= flags:
        return "avx512"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return "amx" if limit in ("ALL", "DEFAULT") or "AMX" in limit else "avx512"


def layout_warning(manifest: dict) -> str | None:
    """Why an artifact runs slower on this CPU than one quantized here would: its weights are laid
    out for the other kind of CPU (``weight_layout``, recorded at build as ``runtime.weight_layout``;
    artifacts from before that record say nothing). None where they fit."""
    built, here = manifest["runtime"].get("weight_layout"), weight_layout()
    if built is None or built == here:
        return None
    kinds = {"amx": "a CPU with AMX", "avx512": "a CPU without AMX"}
    cost = "an SD 1.5 UNet step 12-14% slower" if here == "amx" else "not measured on such a CPU"
    return (
        f"its weights are laid out for {kinds.get(built, built)}, and this is {kinds[here]}: oneDNN lays "
        f"every convolution weight out again at each call ({cost}; docs/QUANTIZATION.md, \"Where to "
        "quantize\"); quantize on a CPU like this one for full speed"
    )


def fingerprint(module: torch.nn.Module) -> str:
    """A cheap identity of a diffusers model (a UNet, a decoder): its config and a strided sample of every weight."""
    config = {k: v for k, v in module.config.items() if not k.startswith("_")}  # "_..." is bookkeeping
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            digest.update(name.encode())
            digest.update(flat[:: max(1, flat.numel() // 64)].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def read_manifest(folder: Path, required: tuple[str, ...] = _REQUIRED) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {folder}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path} has format {found!r}; this mixdiff reads format {FORMAT}")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return manifest


def _verify_build(folder: Path, required: tuple[str, ...]) -> dict:
    """The manifest of ``folder`` once the versions it was built with, the CPU features it
    needs and every file's hash are checked; weights laid out for the other kind of CPU are
    logged as a warning (``layout_warning``)."""
    manifest = read_manifest(folder, required)
    built = manifest["runtime"]
    for package, installed in (("torch", torch.__version__), ("torchao", version("torchao"))):
        if built[package] != installed:
            raise ArtifactError(
                f"built with {package} {built[package]}, but {package} {installed} is installed: "
                "quantize again with this version"
            )
    missing = sorted(set(built["cpu_features"]) - cpu_flags())
    if missing:
        raise ArtifactError(f"needs CPU features this CPU lacks: {', '.join(missing)}")
    if warning := layout_warning(manifest):  # slower here, not refused
        log.warning("artifact %s: %s", folder, warning)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"file {name} listed in {MANIFEST} is missing")
        if sha256(path) != expected:
            raise ArtifactError(f"file {name} does not match its sha256 in {MANIFEST}: damaged or changed")
    return manifest


def _check_source(manifest: dict, module: torch.nn.Module, key: str, what: str) -> None:
    """``ArtifactError`` unless ``module`` is the model (``what``) the artifact was made from,
    whose fingerprint its manifest keeps as ``model.<key>``."""
    made_from, loaded = manifest["model"][key], fingerprint(module)
    if made_from != loaded:
        raise ArtifactError(
            f"quantized from a different {what} than the loaded model's (fingerprint {made_from}, model's {loaded})"
        )


def verify(folder: Path, unet: torch.nn.Module | None = None) -> dict:
    """The manifest of the UNet artifact ``folder`` once versions, CPU features, hashes and
    (given ``unet``) the source model are checked; ``ArtifactError`` names the first problem found."""
    manifest = _verify_build(folder, _REQUIRED)
    for group in manifest["timestep_groups"]:
        for key in ("file", "weights"):
            if group.get(key) not in manifest["files"]:
                raise ArtifactError(f"{key} {group.get(key)} of a timestep group has no sha256 in {MANIFEST}")
    if unet is not None:
        _check_source(manifest, unet, "unet_fingerprint", "UNet")
    return manifest


class PackagedUNet:
    """A ``UNetVariant`` running the artifact's compiled packages (INT8, or BF16), one per timestep group.

    Takes and returns fp32. Any batch works (the packages run the batch they were
    compiled for, 2 or 1, so a larger one runs in chunks); the latent size is fixed at
    the one it was built for, which ``supports`` tells before a generation starts.
    """

    #: Compiled ahead of time: its first call is as fast as the next (SD 1.5, a 4-step image with
    #: no warm-up 21.3 s, the next 21.0 s), so a server need not run it before it is ready.
    warmed_up = True

    def __init__(self, precision: str, manifest: dict, runners: list, vae_scale_factor: int):
        self.precision = precision
        self.manifest = manifest
        self.runners = runners
        self.groups = TimestepGroups([g["t_min"] for g in manifest["timestep_groups"]] + [float("inf")])
        self.latent_size = tuple(manifest["model"]["latent_size"])
        self.batch = manifest["model"]["compiled_batch"]
        self.vae_scale_factor = vae_scale_factor

    def supports(self, batch: int, height: int, width: int) -> bool:
        """Whether a UNet call for ``batch`` latents of an image ``height``x``width`` px can run."""
        return batch >= 1 and (height // self.vae_scale_factor, width // self.vae_scale_factor) == self.latent_size

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        if tuple(sample.shape[2:]) != self.latent_size:
            h, w = (s * self.vae_scale_factor for s in self.latent_size)
            raise ValueError(
                f"the {self.precision} UNet was compiled for {h}x{w} px images "
                f"(latents {self.latent_size[0]}x{self.latent_size[1]}), got latents "
                f"{sample.shape[2]}x{sample.shape[3]}"
            )
        inputs = UNetInputs.from_call(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        runner = self.runners[self.groups.index(inputs.t)]
        return run_in_batches(runner, inputs.args(), self.batch)


def _open_package(path: Path, file: str, weights: str) -> Package:
    """``load_package`` of an artifact's files, any failure an ``ArtifactError`` naming them."""
    try:
        return load_package(path / file, path / weights)
    except Exception as exc:  # a package the runtime cannot open: say which, keep the cause
        raise ArtifactError(f"cannot load package {file} with {weights}: {exc}") from exc


def _load_packages(path: Path, manifest: dict, pipe) -> PackagedUNet:
    """An artifact's packages, one per timestep group, as one variant."""
    if "attention" in manifest["recipe"]:  # its packages call torch.ops.mixdiff's attention
        try:
            kernels.load()
        except (OSError, RuntimeError) as exc:
            raise ArtifactError(f"needs the mixdiff kernels (kernels/), which could not be built: {exc}") from exc
    runners = [_open_package(path, group["file"], group["weights"]) for group in manifest["timestep_groups"]]
    return PackagedUNet(path.name, manifest, runners, pipe.vae_scale_factor)


#: How an artifact is loaded, by the ``method`` its manifest names (``quantization.methods``
#: writes these names): a method whose artifacts load differently adds its loader here.
LOADERS: dict[str, Callable[[Path, dict, object], object]] = {
    "ptq-int8-static": _load_packages,
    "qat-int8-static": _load_packages,
    "bf16-aot": _load_packages,
}


#: A tiny decoder artifact's folder under the model's ``vae_tiny/``.
DECODER_ARTIFACT = "int8"
#: What a tiny decoder artifact's manifest must have.
_DECODER_REQUIRED = ("method", "runtime", "files", "package", "model")


def decoder_input(latents: torch.Tensor, config) -> torch.Tensor:
    """The denoised ``latents`` scaled as a decoder of ``config`` (its ``scaling_factor`` and
    ``shift_factor``) takes them: what the loop decodes, and what the INT8 decoder is calibrated on."""
    latents = latents / config.scaling_factor
    if getattr(config, "shift_factor", None):
        latents = latents + config.shift_factor
    return latents


class PackagedDecoder:
    """A tiny decoder artifact's compiled INT8 package, decoding as the decoder it was made
    from does: ``decode(latents, return_dict=False)`` takes fp32 latents (``decoder_input``'s)
    for images of the size it was built for, any batch (in chunks of the batch it was compiled
    for), and returns ``(pixels,)`` in fp32. It has its own precision: ``vae_precision`` does not
    apply to it."""

    dtype = torch.float32

    def __init__(self, name: str, manifest: dict, runner, config):
        self.name, self.manifest, self.runner, self.config = name, manifest, runner, config
        self.image_size = tuple(manifest["model"]["image_size"])
        self.batch = manifest["model"]["compiled_batch"]

    def supports(self, height: int, width: int) -> bool:
        """Whether it decodes images of ``height`` x ``width`` px."""
        return (height, width) == self.image_size

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (run_in_batches(self.runner, (latents.float().contiguous(),), self.batch),)


def load_decoder(path: Path, decoder: torch.nn.Module, name: str) -> PackagedDecoder:
    """The tiny decoder artifact at ``path`` (``quantization.decoder`` writes it), once verified
    as ``verify`` verifies UNet artifacts and checked to be made from ``decoder``, as the decoder ``name``."""
    path = Path(path)
    manifest = _verify_build(path, _DECODER_REQUIRED)
    try:
        package, model = manifest["package"], manifest["model"]
        files = (package["file"], package["weights"])
        sizes = [int(n) for n in (*model["image_size"], model["compiled_batch"])]
        _check_source(manifest, decoder, "decoder_fingerprint", "tiny decoder")
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path / MANIFEST} does not describe a decoder package (package, model)") from None
    if len(sizes) != 3 or any(file not in manifest["files"] for file in files):
        raise ArtifactError(f"{path / MANIFEST}: its package's files, sizes or hashes are missing")
    return PackagedDecoder(name, manifest, _open_package(path, *files), decoder.config)


def load_variant(path: Path, pipe):
    """The artifact at ``path`` as a UNet variant named after its folder, once verified."""
    path = Path(path)
    manifest = verify(path, pipe.unet)
    loader = LOADERS.get(manifest["method"])
    if loader is None:
        raise ArtifactError(f"made by method {manifest['method']!r}, which this mixdiff cannot load")
    return loader(path, manifest, pipe)
