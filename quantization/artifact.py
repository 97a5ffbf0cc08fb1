"""Prequantized UNet artifacts: ``<model>/quantized/<name>/`` and how a server loads one.

The folder holds, per timestep group, an AOTInductor package (``unet-g<k>.pt2``:
the INT8/BF16 UNet compiled to a shared library, so loading is ``dlopen``, not
minutes of compilation) and its weights (``unet-g<k>.safetensors``), and a
``manifest.json`` saying how it was made and what it needs.

The weights are the package's constants, taken from Inductor as it compiles the
package (``build_package``) and stored next to it, 64-byte aligned in one byte array
with a table of where each lies and what it is; the INT8 conv/linear weights among
them are already in oneDNN's blocked layout (freezing prepacks them), which no tensor
format but a byte array can carry. Stored as safetensors they are plain data, not code
or pickles, and the package is code only. At load time they are copied into one
64-byte-aligned block and handed to the package as its constants (``load_package``):
AOTInductor's own loader puts them in a ``malloc`` block, 16 bytes past a cache line,
where the INT8 kernels read their weights 1.4-1.5x slower (docs/QUANTIZATION.md).
A compiled package is
only valid with the torch it was compiled by, on a CPU with the instructions it was
compiled for (AVX-512, never AMX: ``portable_isa``), and only for the UNet it was
quantized from; ``load_variant`` checks all of that, and every file's sha256, before
it loads anything, and refuses with an ``ArtifactError`` naming what is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import platform
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

import kernels
from quantization import ptq
from quantization.calibration import UNetInputs
from quantization.ptq import TimestepGroups, run_in_batches

MANIFEST = "manifest.json"
#: 4: packages compiled with ``aoti_codegen``'s fix; format 3 packages leak an activation
#: per INT8 linear with a folded residual, on every call.
FORMAT = 4
_REQUIRED = ("runtime", "files", "timestep_groups", "model")
#: gcc ``-m`` flags Inductor compiles CPU kernels with, and the /proc/cpuinfo flag each needs.
_GCC_TO_CPUINFO = {
    "-mavx2": "avx2",
    "-mfma": "fma",
    "-mavx512f": "avx512f",
    "-mavx512dq": "avx512dq",
    "-mavx512vl": "avx512vl",
    "-mavx512bw": "avx512bw",
    "-mavx512bf16": "avx512_bf16",
    "-mavx512vnni": "avx512_vnni",
}


class ArtifactError(Exception):
    """A quantized artifact is missing, damaged, or does not fit this runtime, CPU or model."""


def package_name(group: int) -> str:
    return f"unet-g{group}.pt2"


def weights_name(group: int) -> str:
    return f"unet-g{group}.safetensors"


#: How AOTInductor names the constants blob inside a package.
_BLOB_SUFFIX = "_weights.blob"
#: Records every PT2 archive writer adds by itself; copying them would duplicate them.
_WRITER_RECORDS = ".data/"
_BLOB_KEY = "constants"
#: Where each constant starts in the byte array: a cache line, as AMX and AVX-512 loads want.
ALIGNMENT = 64


@contextlib.contextmanager
def _captured_constants():
    """The constants (name, tensor) of the package AOTInductor compiles inside the block, as it
    serializes them: the frozen graph's, the prepacked oneDNN weights among them."""
    from torch._inductor.codecache import AotCodeCompiler

    captured: list[tuple[str, torch.Tensor]] = []
    original = AotCodeCompiler.compile

    def capture(cls, graph, *args, **kwargs):
        captured.extend(
            (name, graph.get_original_value_of_constant(name))
            for name in graph.constants
            if name not in graph.folded_constants
        )
        return original.__func__(cls, graph, *args, **kwargs)

    AotCodeCompiler.compile = classmethod(capture)
    try:
        yield captured
    finally:
        AotCodeCompiler.compile = original


def _constant_bytes(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, size) of the memory a constant's data lives in: a prepacked oneDNN tensor's
    buffer, or a strided tensor's whole storage (its view is rebuilt from sizes and strides)."""
    if tensor.is_mkldnn:
        return torch.ops.mkldnn.data_ptr(tensor), torch.ops.mkldnn._nbytes(tensor)
    return tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()


def _save_constants(constants: list[tuple[str, torch.Tensor]], weights: Path, package: str) -> None:
    """Write ``constants`` into ``weights``: one uint8 array, each constant at an ``ALIGNMENT``
    boundary, and a table (metadata ``"table"``) of its name, place, dtype and shape."""
    table, sources, offset = [], [], 0
    for name, tensor in constants:
        address, nbytes = _constant_bytes(tensor)
        sources.append(address)
        entry = {"name": name, "offset": offset, "nbytes": nbytes, "dtype": str(tensor.dtype).removeprefix("torch.")}
        entry["sizes"] = list(tensor.shape)
        if tensor.is_mkldnn:
            entry["mkldnn_md"] = torch.ops.mkldnn._get_mkldnn_serialized_md(tensor).numpy().tobytes().hex()
        else:
            entry["strides"], entry["storage_offset"] = list(tensor.stride()), tensor.storage_offset()
        table.append(entry)
        offset += -(-nbytes // ALIGNMENT) * ALIGNMENT
    blob = torch.empty(offset, dtype=torch.uint8)
    for address, entry in zip(sources, table):
        ctypes.memmove(blob.data_ptr() + entry["offset"], address, entry["nbytes"])
    save_file({_BLOB_KEY: blob}, str(weights), metadata={"table": json.dumps(table), "package": package})


def _strip(package: Path) -> None:
    """Drop AOTInductor's own copy of the constants from ``package``, and the generated C++
    sources: the loader needs only the compiled library, and they name the build machine's
    paths in their compile commands."""
    staged = package.with_name(package.name + ".tmp")
    with PT2ArchiveReader(str(package)) as reader, PT2ArchiveWriter(str(staged)) as writer:
        for name in reader.get_file_names():
            if not name.endswith((_BLOB_SUFFIX, ".cpp")) and not name.startswith(_WRITER_RECORDS):
                writer.write_bytes(name, reader.read_bytes(name))
    staged.replace(package)


@contextlib.contextmanager
def constants_apart(package: Path, weights: Path):
    """Around the AOTInductor compilation of ``package``: afterwards its constants are in
    ``weights`` (``ALIGNMENT``-aligned, with their table) and the package holds code only."""
    with _captured_constants() as constants:
        yield
    if not constants:
        raise RuntimeError(f"AOTInductor compiled {package.name} without handing over its constants")
    _strip(package)
    _save_constants(constants, weights, package.name)


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


def build_package(converted: torch.fx.GraphModule, example: UNetInputs, package: Path, weights: Path) -> None:
    """Compile ``converted`` into the AOTInductor ``package`` (code only) and its constants into ``weights``."""
    with constants_apart(package, weights), portable_isa():
        ptq.compile_package(converted, example, str(package))


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


class Package:
    """A loaded AOTInductor package and the memory its constants live in (it only points there)."""

    def __init__(self, runner, memory: torch.Tensor, constants: dict[str, torch.Tensor]):
        self.runner, self.memory, self.constants = runner, memory, constants

    def __call__(self, *args):
        return self.runner(*args)


def load_package(package: Path, weights: Path) -> Package:
    """The runnable AOTInductor model of ``package`` with the constants in ``weights`` handed to it."""
    with safe_open(str(weights), "pt") as f:
        table = json.loads(f.metadata()["table"])
        blob = f.get_tensor(_BLOB_KEY)  # memory-mapped
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


def required_cpu_features() -> list[str]:
    """The CPU flags the kernels Inductor compiles for a package rely on (from the vector ISA
    ``portable_isa`` picks)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    with portable_isa():
        flags = pick_vec_isa().build_arch_flags().split()
    return sorted({_GCC_TO_CPUINFO[f] for f in flags if f in _GCC_TO_CPUINFO})


def runtime() -> dict:
    """What a compiled package depends on, recorded at build time and checked at load time."""
    return {
        "torch": torch.__version__,
        "torchao": version("torchao"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_features": required_cpu_features(),
    }


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """A cheap identity of a UNet: its config and a strided sample of every weight."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # "_..." is bookkeeping
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in unet.named_parameters():
            flat = p.detach().reshape(-1)
            digest.update(name.encode())
            digest.update(flat[:: max(1, flat.numel() // 64)].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file of ``folder`` into ``manifest["files"]`` and write ``manifest.json``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "format": FORMAT, "files": {p.name: sha256(p) for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
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
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return manifest


def verify(folder: Path, unet: torch.nn.Module | None = None) -> dict:
    """The manifest of ``folder`` once versions, CPU features, hashes and (given ``unet``)
    the source model are checked; ``ArtifactError`` names the first problem found."""
    manifest = read_manifest(folder)
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
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"file {name} listed in {MANIFEST} is missing")
        if sha256(path) != expected:
            raise ArtifactError(f"file {name} does not match its sha256 in {MANIFEST}: damaged or changed")
    for group in manifest["timestep_groups"]:
        for key in ("file", "weights"):
            if group.get(key) not in manifest["files"]:
                raise ArtifactError(f"{key} {group.get(key)} of a timestep group has no sha256 in {MANIFEST}")
    if unet is not None and manifest["model"]["unet_fingerprint"] != unet_fingerprint(unet):
        raise ArtifactError(
            "quantized from a different UNet than the loaded model's "
            f"(fingerprint {manifest['model']['unet_fingerprint']}, model's {unet_fingerprint(unet)})"
        )
    return manifest


class Int8UNet:
    """A ``UNetVariant`` running the artifact's compiled packages, one per timestep group.

    Takes and returns fp32. Any batch works (the packages run batches of
    ``ptq.BATCH``, so a larger one runs in chunks); the latent size is fixed at the
    one it was built for, which ``supports`` tells before a generation starts.
    """

    def __init__(self, precision: str, manifest: dict, runners: list, vae_scale_factor: int):
        self.precision = precision
        self.manifest = manifest
        self.runners = runners
        self.groups = TimestepGroups([g["t_min"] for g in manifest["timestep_groups"]] + [float("inf")])
        self.latent_size = tuple(manifest["model"]["latent_size"])
        self.vae_scale_factor = vae_scale_factor

    def supports(self, batch: int, height: int, width: int) -> bool:
        """Whether a UNet call for ``batch`` latents of an image ``height``x``width`` px can run."""
        return batch >= 1 and (height // self.vae_scale_factor, width // self.vae_scale_factor) == self.latent_size

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        if tuple(sample.shape[2:]) != self.latent_size:
            h, w = (s * self.vae_scale_factor for s in self.latent_size)
            raise ValueError(
                f"the {self.precision} UNet was quantized for {h}x{w} px images "
                f"(latents {self.latent_size[0]}x{self.latent_size[1]}), got latents "
                f"{sample.shape[2]}x{sample.shape[3]}"
            )
        inputs = UNetInputs.from_call(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        runner = self.runners[self.groups.index(inputs.t)]
        return run_in_batches(runner, inputs.args())


def load_variant(path: Path, pipe) -> Int8UNet:
    """The artifact at ``path`` as a UNet variant named after its folder, once verified."""
    path = Path(path)
    manifest = verify(path, pipe.unet)
    if "attention" in manifest["recipe"]:  # its packages call torch.ops.mixdiff.int8_attention
        try:
            kernels.load()
        except (OSError, RuntimeError) as exc:
            raise ArtifactError(f"needs the mixdiff kernels (kernels/), which could not be built: {exc}") from exc
    runners = []
    for group in manifest["timestep_groups"]:
        try:
            runners.append(load_package(path / group["file"], path / group["weights"]))
        except Exception as exc:  # a package the runtime cannot open: say which, keep the cause
            raise ArtifactError(f"cannot load package {group['file']} with {group['weights']}: {exc}") from exc
    return Int8UNet(path.name, manifest, runners, pipe.vae_scale_factor)
