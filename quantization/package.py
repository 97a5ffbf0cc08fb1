"""Writing an artifact: compile a converted graph into AOTInductor packages, keep their
constants apart, and write the manifest ``quantization.runtime`` reads.

What is unquantized in a converted graph (GroupNorm, softmax, residual additions,
fallback layers, ...) runs in BF16: the graph is exported again inside
``torch.autocast(bfloat16)``, which bakes the casts into it, and Inductor's freezing
passes fuse every dequantize -> conv/linear -> quantize chain into oneDNN INT8 kernels.

The weights are the package's constants, taken from Inductor as it compiles the package
(``build_package``) and stored next to it, 64-byte aligned in one byte array with a table
of where each lies and what it is; the INT8 conv/linear weights among them are already in
oneDNN's blocked layout (freezing prepacks them), which no tensor format but a byte array
can carry. Stored as safetensors they are plain data, and the package is code only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import platform
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

from quantization.aoti_codegen import releasing_optional_tensor_handles
from quantization.graph import example_args
from quantization.inputs import BATCH, UNetInputs, run_in_batches
from quantization.runtime import (
    ALIGNMENT,
    BLOB_KEY,
    FORMAT,
    MANIFEST,
    cpu_flags,
    portable_isa,
    sha256,
    weight_layout,
)

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


def package_name(group: int) -> str:
    return f"unet-g{group}.pt2"


def weights_name(group: int) -> str:
    return f"unet-g{group}.safetensors"


#: How AOTInductor names the constants blob inside a package.
_BLOB_SUFFIX = "_weights.blob"
#: Records every PT2 archive writer adds by itself; copying them would duplicate them.
_WRITER_RECORDS = ".data/"


#: Whether this torch's Inductor has ``cpp.march`` (2.13 has it, 2.11 not). Without it Inductor
#: always compiles with ``-march=native``: packages need the building CPU's features.
PORTABLE_MARCH = hasattr(torch._inductor.config.cpp, "march")
#: How the packages' CPU code is compiled, as the recipes in manifests say it.
MARCH = "no -march=native" if PORTABLE_MARCH else "-march=native"

#: Inductor settings of the packages. ``freezing``: the pass that holds torchao's INT8
#: conv/linear fusions (it also needs grad off). ``cpp.march=""``: no ``-march=native``,
#: only the vector ISA's explicit ``-m`` flags, so the CPU features the manifest lists
#: are all a package needs. ``cpp.dynamic_threads``: OpenMP loops take the thread count
#: of the process that runs them, not of the machine that compiled them.
#: ``package_constants_*``: the weights go to one raw blob beside the shared library, not
#: into it; the artifact drops that blob and keeps the constants itself (``build_package``).
AOTI_CONFIG = {
    "freezing": True,
    **({"cpp.march": ""} if PORTABLE_MARCH else {}),
    "cpp.dynamic_threads": True,
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}


class _BF16(torch.nn.Module):
    """Runs the converted graph under BF16 autocast; export records the casts it makes."""

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.quantized = graph

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = () if text_embeds is None else (text_embeds, time_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.quantized(sample, timestep, encoder_hidden_states, *added).float()


def run_bf16(converted: torch.fx.GraphModule, inputs: UNetInputs, batch: int = BATCH) -> torch.Tensor:
    """The converted graph (for a batch of ``batch``) run eagerly the way the artifact runs it
    (unquantized ops in BF16): the reference the compiled artifact must match."""
    with torch.no_grad():
        return run_in_batches(_BF16(converted), inputs.args(), batch)


def export_bf16(
    converted: torch.fx.GraphModule, example: UNetInputs, batch: int = BATCH
) -> torch.export.ExportedProgram:
    """The converted graph (for a batch of ``batch``) exported under BF16 autocast, its casts
    recorded: what is compiled."""
    with torch.no_grad():
        program = torch.export.export(_BF16(converted), example_args(example, batch))
        return program.run_decompositions({})  # inline the autocast region, keep aten ops whole


def compile_program(program: torch.export.ExportedProgram, package_path: str) -> str:
    """Compile an exported program (a converted graph exported under BF16 autocast) to an AOTInductor
    package, as every artifact's packages are compiled."""
    with torch.no_grad(), releasing_optional_tensor_handles():
        return torch._inductor.aoti_compile_and_package(
            program, package_path=package_path, inductor_configs=AOTI_CONFIG
        )


def compile_package(
    converted: torch.fx.GraphModule, example: UNetInputs, package_path: str, batch: int = BATCH
) -> str:
    """Export the converted graph with BF16 casts and compile it to an AOTInductor package for a batch of
    ``batch``."""
    return compile_program(export_bf16(converted, example, batch), package_path)


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
    save_file({BLOB_KEY: blob}, str(weights), metadata={"table": json.dumps(table), "package": package})


def _strip(package: Path) -> None:
    """Drop AOTInductor's own copy of the constants from ``package``, and empty the generated
    C++ sources: the loader needs only the compiled library, and they name the build
    machine's paths in their compile commands. The sources stay as empty files: torch
    2.11's loader finds the library's metadata by its source's name."""
    staged = package.with_name(package.name + ".tmp")
    with PT2ArchiveReader(str(package)) as reader, PT2ArchiveWriter(str(staged)) as writer:
        for name in reader.get_file_names():
            if not name.endswith(_BLOB_SUFFIX) and not name.startswith(_WRITER_RECORDS):
                writer.write_bytes(name, b"" if name.endswith(".cpp") else reader.read_bytes(name))
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


def build_package(
    converted: torch.fx.GraphModule, example: UNetInputs, package: Path, weights: Path, batch: int = BATCH
) -> None:
    """Compile ``converted`` into the AOTInductor ``package`` (code only, for a batch of ``batch``) and its
    constants into ``weights``."""
    with constants_apart(package, weights), portable_isa():
        compile_package(converted, example, str(package), batch)


def required_cpu_features() -> list[str]:
    """The CPU flags the kernels Inductor compiles for a package rely on (from the vector ISA
    ``portable_isa`` picks; without ``PORTABLE_MARCH``, every flag of this CPU)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if not PORTABLE_MARCH:
        return sorted(cpu_flags())
    with portable_isa():
        flags = pick_vec_isa().build_arch_flags().split()
    return sorted({_GCC_TO_CPUINFO[f] for f in flags if f in _GCC_TO_CPUINFO})


def runtime_record() -> dict:
    """What a compiled package depends on, recorded at build time and checked at load time."""
    return {
        "torch": torch.__version__,
        "torchao": version("torchao"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_features": required_cpu_features(),
        "weight_layout": weight_layout(),  # what oneDNN prepacked the weights for (runtime.layout_warning)
    }


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file of ``folder`` into ``manifest["files"]`` and write ``manifest.json``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "format": FORMAT, "files": {p.name: sha256(p) for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
