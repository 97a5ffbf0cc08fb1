"""Post-training static INT8 quantization of a diffusers UNet with PT2E.

The flow is torchao's PT2E one, for the x86 Inductor backend:
``torch.export`` → ``prepare_pt2e`` with ``UNetQuantizer`` (torchao's
``X86InductorQuantizer``, residual additions left unquantized: INT8 per-channel
symmetric weights, UINT8 per-tensor affine activations measured by histogram
observers) → run the calibration inputs → ``convert_pt2e``. What stays
unquantized (GroupNorm, softmax, residual additions, the fallback layers, …) runs in BF16: the
converted graph is exported again inside ``torch.autocast(bfloat16)``, which
bakes the casts into the graph, and Inductor's freezing passes then fuse every
dequantize → conv/linear → quantize chain into oneDNN INT8 kernels (AMX where the
CPU has it).

The graph is exported for a batch of ``BATCH`` (one image with classifier-free
guidance) and a latent size, those of the calibration inputs; ``run_in_batches``
runs any batch through it in chunks. (With a dynamic batch dimension, torchao's
qlinear fusion fails on UNets with linear projections, SD 2.x and SDXL.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kernels.attention import FusedAttnProcessor
from quantization.aoti_codegen import releasing_optional_tensor_handles
from quantization.calibration import UNetInputs

BATCH = 2
#: Inductor settings of the packages. ``freezing``: the pass that holds torchao's INT8
#: conv/linear fusions (it also needs grad off). ``cpp.march=""``: no ``-march=native``,
#: only the vector ISA's explicit ``-m`` flags, so the CPU features the manifest lists
#: are all a package needs. ``cpp.dynamic_threads``: OpenMP loops take the thread count
#: of the process that runs them, not of the machine that compiled them.
#: ``package_constants_*``: the weights go to one raw blob beside the shared library, not
#: into it; the artifact drops that blob and keeps the constants itself (see ``artifact``).
AOTI_CONFIG = {
    "freezing": True,
    "cpp.march": "",
    "cpp.dynamic_threads": True,
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}
#: How the quantized artifacts are made, recorded in every manifest.
RECIPE = {
    "flow": "pt2e static (torch.export -> prepare_pt2e -> calibrate -> convert_pt2e)",
    "quantizer": "torchao X86InductorQuantizer, default config, residual additions unquantized (bf16)",
    "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver)",
    "activations": "uint8 per-tensor affine, static (HistogramObserver)",
    "unquantized_ops": "bf16 (torch.autocast baked into the exported graph)",
    "attention": "mixdiff.int8_attention (kernels/): q.k in int8 per token, keys centred; softmax and p.v bf16",
    "compiler": "AOTInductor, freezing (oneDNN int8 conv/linear fusions), no -march=native, dynamic threads, "
    "optional tensor arguments released after each call (quantization/aoti_codegen.py)",
    "stored_weights": "the package's constants (oneDNN-prepacked int8 weights, scales, bf16 leftovers), "
    "64-byte aligned, as safetensors, handed to the package at load",
}


class UNetGraph(torch.nn.Module):
    """The UNet as a function of tensors only, the form ``torch.export`` takes.

    Arguments: ``sample, timestep (1-D), encoder_hidden_states`` and, for SDXL,
    ``text_embeds, time_ids``. Module names inside are ``unet.<name>``.
    """

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _BF16(torch.nn.Module):
    """Runs the converted graph under BF16 autocast; export records the casts it makes."""

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.quantized = graph

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = () if text_embeds is None else (text_embeds, time_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.quantized(sample, timestep, encoder_hidden_states, *added).float()


def _chunks(args: tuple[torch.Tensor, ...]):
    """``(chunk, n)`` pairs: the arguments cut into batches of exactly ``BATCH``, the last
    one padded by repeating its last item, and how many items of each are real."""
    total = args[0].shape[0]
    for start in range(0, total, BATCH):
        chunk = [a[start : start + BATCH] for a in args]
        n = chunk[0].shape[0]
        if n < BATCH:
            chunk = [torch.cat([a, a[-1:].expand(BATCH - n, *a.shape[1:])]) for a in chunk]
        yield tuple(chunk), n


def run_in_batches(fn, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``fn`` (a graph built for a batch of ``BATCH``) applied to arguments of any batch."""
    outputs = [fn(*chunk)[:n] for chunk, n in _chunks(args)]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _example(example: UNetInputs) -> tuple[torch.Tensor, ...]:
    return next(_chunks(example.args()))[0]


def export_unet(unet: torch.nn.Module, example: UNetInputs) -> torch.fx.GraphModule:
    """The FP32 UNet as an exported graph module, ready for ``prepare_pt2e``; its attention
    is ``mixdiff.int8_attention`` (SDPA in FP32, the fused kernel once autocast makes it BF16)."""
    graph = UNetGraph(unet).eval()
    processors = unet.attn_processors
    unet.set_attn_processor(FusedAttnProcessor(int8_scores=True))  # builds the kernels, or raises why it cannot
    try:
        with torch.no_grad():
            return torch.export.export(graph, _example(example)).module()
    finally:
        unet.set_attn_processor(processors)


def make_quantizer(fallback: Sequence[str] = (), only: str | None = None):
    """A ``UNetQuantizer`` (``quantization.quantizer``): everything quantized but the ``fallback`` UNet modules
    (names as in ``unet.named_modules()``), or, with ``only``, that one module alone."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    from quantization.quantizer import UNetQuantizer

    config = get_default_x86_inductor_quantization_config()
    quantizer = UNetQuantizer()
    if only is not None:
        return quantizer.set_module_name_qconfig(f"unet.{only}", config)
    quantizer.set_global(config)
    for name in fallback:
        quantizer.set_module_name_qconfig(f"unet.{name}", None)
    return quantizer


def quantize_graph(graph: torch.fx.GraphModule, quantizer, calibration: Sequence[UNetInputs]) -> torch.fx.GraphModule:
    """Prepare a copy of ``graph``, run the calibration inputs through it, convert it."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("no calibration inputs to measure activation ranges on")
    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    with torch.no_grad():
        for inputs in calibration:
            run_in_batches(prepared, inputs.args())
    converted = convert_pt2e(prepared)
    _drop_tensor_metadata_asserts(converted)
    return converted


def _drop_tensor_metadata_asserts(graph: torch.fx.GraphModule) -> None:
    """Remove ``aten._assert_tensor_metadata`` nodes: they pin fp32 dtypes that BF16
    autocast changes, so the second export would fail on them."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.graph.erase_node(node)
    graph.recompile()


def run_bf16(converted: torch.fx.GraphModule, inputs: UNetInputs) -> torch.Tensor:
    """The converted graph run eagerly the way the artifact runs it (unquantized ops in
    BF16): the reference the compiled artifact must match."""
    with torch.no_grad():
        return run_in_batches(_BF16(converted), inputs.args())


def export_bf16(converted: torch.fx.GraphModule, example: UNetInputs) -> torch.export.ExportedProgram:
    """The converted graph exported under BF16 autocast, its casts recorded: what is compiled."""
    with torch.no_grad():
        program = torch.export.export(_BF16(converted), _example(example))
        return program.run_decompositions({})  # inline the autocast region, keep aten ops whole


def compile_package(converted: torch.fx.GraphModule, example: UNetInputs, package_path: str) -> str:
    """Export the converted graph with BF16 casts and compile it to an AOTInductor package."""
    program = export_bf16(converted, example)
    with torch.no_grad(), releasing_optional_tensor_handles():
        return torch._inductor.aoti_compile_and_package(program, package_path=package_path, inductor_configs=AOTI_CONFIG)


@dataclass
class TimestepGroups:
    """K contiguous ranges of training timesteps, each with its own activation scales.

    Group ``g`` covers ``[bounds[g], bounds[g+1])``; the last one includes ``T``.
    """

    bounds: list[float] = field(default_factory=list)

    @classmethod
    def even(cls, k: int, num_train_timesteps: int) -> TimestepGroups:
        if k < 1:
            raise ValueError(f"timestep groups must be at least 1, got {k}")
        return cls([num_train_timesteps * g / k for g in range(k + 1)])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def index(self, t: float) -> int:
        for g in range(len(self) - 1):
            if t < self.bounds[g + 1]:
                return g
        return len(self) - 1

    def split(self, inputs: Sequence[UNetInputs]) -> list[list[UNetInputs]]:
        groups: list[list[UNetInputs]] = [[] for _ in range(len(self))]
        for item in inputs:
            groups[self.index(item.t)].append(item)
        return groups
