"""OpenVINO running the same UNet on the same inputs: the peer ``mixdiff bench --peer openvino``
times mixdiff's variants against.

The UNet is converted with ``openvino.convert_model`` from the module and inputs mixdiff's
variants are built from. ``openvino-bf16`` is OpenVINO's CPU plugin with
``INFERENCE_PRECISION_HINT=bf16``. ``openvino-int8`` is ``nncf.quantize`` (A8W8: 8-bit
weights per output channel, 8-bit activations per tensor; the transformer preset, without
bias correction, as OpenVINO's own Stable Diffusion examples quantize their UNet), calibrated
on the same random inputs at the same timesteps as mixdiff's INT8, run with BF16 for what
stays unquantized. Both run with as many threads as torch, latency-tuned. ``bf16_call``
converts and runs any other module so (``mixdiff bench --time-to-image``: the text encoder
and the decoders).

An optional extra (``pip install -e ".[peer]"``): neither the server nor the tests need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from quantization.graph import UNetGraph
from quantization.inputs import UNetInputs

#: The peer's variants, named as mixdiff's are.
VARIANTS = ("openvino-bf16", "openvino-int8")


def available() -> str | None:
    """None if OpenVINO and NNCF import, else what to install."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install -e '.[peer]'"
    return None


def versions() -> dict[str, str]:
    import nncf
    import openvino

    return {"openvino": openvino.__version__.split("-")[0], "nncf": nncf.__version__}


def _config() -> dict:
    """The CPU plugin's settings for every model of the peer: BF16 where not quantized, torch's
    threads, latency-tuned."""
    return {
        "INFERENCE_PRECISION_HINT": "bf16",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }


def _compiled_call(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], calibration: list[torch.Tensor] | None = None
) -> tuple[Callable[[], torch.Tensor], float]:
    """``module`` converted by ``openvino.convert_model``, quantized by NNCF (its defaults, calibrated on
    ``calibration``, tensors of its one input) where given, and compiled as ``openvino-bf16`` is: a
    no-argument callable running it on ``example`` (returning its first output as a torch tensor), and
    the seconds building it took."""
    import openvino as ov

    start = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    if calibration is not None:
        import nncf

        dataset = nncf.Dataset(calibration, lambda tensor: [tensor.numpy()])
        model = nncf.quantize(model, dataset, subset_size=len(calibration))
    compiled = ov.Core().compile_model(model, "CPU", _config())
    args = [t.numpy() for t in example]
    compiled(args)  # the first inference allocates
    return lambda: torch.from_numpy(compiled(args)[0].copy()), time.perf_counter() - start


def bf16_call(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[Callable[[], torch.Tensor], float]:
    """``module`` (a text encoder, a decoder) converted and compiled as ``openvino-bf16`` is: a
    no-argument callable running it on ``example``, and the seconds converting and compiling took."""
    return _compiled_call(module, example)


def int8_call(
    module: torch.nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]
) -> tuple[Callable[[], torch.Tensor], float]:
    """``module`` of one tensor (a decoder) converted, quantized by NNCF (its defaults, calibrated on
    ``calibration``) and compiled as ``bf16_call`` compiles: a no-argument callable running it on
    ``example``, and the seconds building it took."""
    return _compiled_call(module, (example,), calibration)


def _numpy(inputs: UNetInputs) -> list:
    return [t.numpy() for t in inputs.args()]


def steps(
    unet: torch.nn.Module, inputs: UNetInputs, calibration: list[UNetInputs], variants
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, dict]]:
    """A no-argument callable per peer variant running one step on ``inputs`` (returning the
    output as a torch tensor), and what building each cost (seconds)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    config = _config()
    args = _numpy(inputs)
    start = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(UNetGraph(unet), example_input=inputs.args())
    converted = time.perf_counter() - start
    out: dict[str, Callable[[], torch.Tensor]] = {}
    build: dict[str, dict] = {}
    for name in variants:
        start = time.perf_counter()
        if name == "openvino-bf16":
            compiled = core.compile_model(model, "CPU", config)
        elif name == "openvino-int8":
            dataset = nncf.Dataset(calibration, _numpy)
            quantized = nncf.quantize(
                model,
                dataset,
                subset_size=len(calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
            )
            compiled = core.compile_model(quantized, "CPU", config)
        else:
            raise ValueError(f"unknown peer variant {name!r}; known: {', '.join(VARIANTS)}")
        compiled(args)  # the first inference allocates
        out[name] = lambda c=compiled: torch.from_numpy(c(args)[0].copy())
        build[name] = {"build_seconds": round(converted + time.perf_counter() - start, 2)}
    return out, build
