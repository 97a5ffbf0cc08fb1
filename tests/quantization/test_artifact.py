"""The artifact: loads in a fresh process and computes what the in-memory quantized
UNet computes; a damaged or mismatched one is refused with the problem named."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from dataclasses import replace

import pytest
import torch
from artifact_helpers import OPTIONS, PROMPTS, rel_mse, run_in_fresh_process
from safetensors import safe_open
from torch.export.pt2_archive._package import PT2ArchiveReader

import kernels
from app.pipeline.tiny import build_tiny_pipeline
from quantization.build import MiscompiledError, build_artifact, check_compiled
from quantization.graph import UNetGraph, export_unet
from quantization.inputs import run_in_batches
from quantization.methods.ptq import PTQConfig, make_quantizer, quantize_graph
from quantization.package import run_bf16
from quantization.runtime import (
    ALIGNMENT,
    FORMAT,
    MANIFEST,
    ArtifactError,
    cpu_flags,
    load_package,
    load_variant,
    verify,
    weight_layout,
)

pytestmark = pytest.mark.slow

def test_artifact_loads_in_fresh_process_and_matches_in_memory_model(
    tiny_pipe, tiny_artifact, calibration_split, tmp_path
):
    folder, manifest = tiny_artifact
    calib, held_out = calibration_split
    # The same quantization in memory, run eagerly with BF16 for what is not INT8.
    converted = quantize_graph(export_unet(tiny_pipe.unet, calib[0]), make_quantizer(), calib)
    expected = [run_bf16(converted, item) for item in held_out]
    with torch.no_grad():
        fp32 = [UNetGraph(tiny_pipe.unet)(*item.args()) for item in held_out]

    # A 0-d timestep and a batch of 1 as the loop may pass them, besides the CFG batch of 2.
    calls = [(x.sample, x.timestep[0].long(), x.encoder_hidden_states) for x in held_out]
    calls.append((held_out[0].sample[:1], held_out[0].timestep[0], held_out[0].encoder_hidden_states[:1]))
    result = run_in_fresh_process(folder, calls, tmp_path)
    assert result["precision"] == "int8"
    *outs, single = result["outputs"]
    for out, want, ref in zip(outs, expected, fp32):
        assert out.dtype == torch.float32 and out.shape == want.shape
        assert rel_mse(out, want) < 1e-2  # compiled INT8 kernels vs the eager reference
        assert rel_mse(out, ref) < 5e-2  # and still close to FP32
    assert torch.allclose(single, outs[0][:1], atol=1e-3, rtol=1e-3)

    assert manifest["fidelity"]["held_out_inputs"] == len(held_out)
    assert manifest["fidelity"]["rel_mse"] < 5e-2
    assert set(manifest["files"]) == {"unet-g0.pt2", "unet-g0.safetensors"}


def test_package_is_code_and_the_weights_are_safetensors(tiny_pipe, tiny_artifact):
    folder, _ = tiny_artifact
    with PT2ArchiveReader(str(folder / "unet-g0.pt2")) as reader:
        records = reader.get_file_names()
        sources = [reader.read_bytes(name) for name in records if name.endswith(".cpp")]
    assert any(name.endswith(".so") for name in records)
    assert not any(name.endswith(".blob") for name in records)
    assert sources and not any(sources)  # emptied: they would name the build machine's paths
    with safe_open(str(folder / "unet-g0.safetensors"), "pt") as f:
        table = json.loads(f.metadata()["table"])
        constants = f.get_tensor("constants")
    unet_bytes = sum(p.numel() for p in tiny_pipe.unet.parameters())
    assert constants.dtype == torch.uint8 and constants.numel() >= unet_bytes  # INT8 weights and more
    assert any("mkldnn_md" in entry for entry in table)  # the prepacked INT8 weights
    assert all(entry["offset"] % ALIGNMENT == 0 for entry in table)


def test_loaded_weights_start_at_cache_lines(tiny_artifact, calibration_split):
    """The prepacked INT8 weights the package reads: AOTInductor's own loader leaves them 16 bytes off."""
    folder, _ = tiny_artifact
    package = load_package(folder / "unet-g0.pt2", folder / "unet-g0.safetensors")
    weights = [torch.ops.mkldnn.data_ptr(t) for t in package.constants.values() if t.is_mkldnn]
    assert weights and all(address % ALIGNMENT == 0 for address in weights)
    with torch.no_grad():
        assert torch.isfinite(run_in_batches(package, calibration_split[0][0].args())).all()


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_calls_leave_no_memory_behind(tiny_pipe, tiny_artifact, calibration_split):
    """Each call used to leak the residual of every INT8 linear with a folded addition
    (about 1 MB per call of this UNet, 90 MB per SD 1.5 step): quantization/aoti_codegen.py."""
    variant = load_variant(tiny_artifact[0], tiny_pipe)
    args = calibration_split[0][0].args()[:3]
    for _ in range(20):
        variant(*args)
    before = _rss_mb()
    for _ in range(300):
        variant(*args)
    assert _rss_mb() - before < 60


def _resident_pages(address: int, nbytes: int) -> int:
    """How many of the whole pages in ``nbytes`` from ``address`` are in memory (``mincore``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    start, end = -(-address // page) * page, (address + nbytes) // page * page
    pages = (ctypes.c_ubyte * ((end - start) // page))()
    assert ctypes.CDLL(None).mincore(ctypes.c_void_p(start), ctypes.c_size_t(end - start), pages) == 0
    return sum(p & 1 for p in pages)


def test_a_dropped_package_hands_its_constants_back(tiny_artifact, calibration_split):
    """torch 2.13's model container keeps a package's constants alive after it is dropped;
    ``Package`` hands their pages back (docs/notes/quantization-design.md)."""
    folder = tiny_artifact[0]
    package = load_package(folder / "unet-g0.pt2", folder / "unet-g0.safetensors")
    with torch.no_grad():
        run_in_batches(package, calibration_split[0][0].args())
    memory = package.memory  # kept mapped, whether or not torch ever frees it
    assert _resident_pages(memory.data_ptr(), memory.nbytes) > 0
    del package
    assert _resident_pages(memory.data_ptr(), memory.nbytes) == 0


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    folder = tmp_path / "int8"
    shutil.copytree(tiny_artifact[0], folder)
    return folder


def _edit_manifest(folder, edit) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_intact_copy_verifies(artifact_copy, tiny_pipe):
    assert verify(artifact_copy, tiny_pipe.unet)["name"] == "int8"


def test_tampered_package_is_refused_naming_the_file(artifact_copy, tiny_pipe):
    package = artifact_copy / "unet-g0.pt2"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet-g0\.pt2 does not match its sha256"):
        load_variant(artifact_copy, tiny_pipe)


def test_tampered_weights_are_refused_naming_the_file(artifact_copy, tiny_pipe):
    weights = artifact_copy / "unet-g0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet-g0\.safetensors does not match its sha256"):
        load_variant(artifact_copy, tiny_pipe)


def test_missing_package_is_refused(artifact_copy, tiny_pipe):
    (artifact_copy / "unet-g0.pt2").unlink()
    with pytest.raises(ArtifactError, match=r"unet-g0\.pt2 listed in manifest.json is missing"):
        load_variant(artifact_copy, tiny_pipe)


def test_other_torch_version_is_refused_naming_both(artifact_copy, tiny_pipe):
    _edit_manifest(artifact_copy, lambda m: m["runtime"].update(torch="2.0.0"))
    expected = f"built with torch 2.0.0, but torch {torch.__version__} is installed"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        load_variant(artifact_copy, tiny_pipe)


def test_missing_cpu_feature_is_refused_naming_it(artifact_copy, tiny_pipe):
    _edit_manifest(artifact_copy, lambda m: m["runtime"]["cpu_features"].append("amx_fp99"))
    with pytest.raises(ArtifactError, match="CPU features this CPU lacks: amx_fp99"):
        load_variant(artifact_copy, tiny_pipe)


def test_artifact_whose_kernels_cannot_be_built_is_refused(artifact_copy, tiny_pipe, monkeypatch):
    """Its packages call torch.ops.mixdiff.int8_attention: without the kernels they cannot run."""

    def no_compiler():
        raise RuntimeError("Error building extension 'mixdiff_kernels': c++: not found")

    monkeypatch.setattr(kernels, "load", no_compiler)
    with pytest.raises(ArtifactError, match="needs the mixdiff kernels .*c\\+\\+: not found"):
        load_variant(artifact_copy, tiny_pipe)


def test_packages_need_avx512_not_amx(tiny_artifact):
    """Inductor's code in a package has no AMX instruction (oneDNN picks AMX at run time), so
    the manifest asks for none: an artifact built on a Xeon with AMX loads on any CPU with
    the same AVX-512 subset."""
    _, manifest = tiny_artifact
    features = manifest["runtime"]["cpu_features"]
    assert features and not [f for f in features if f.startswith("amx")], features
    assert set(features) <= cpu_flags()


def test_manifest_records_the_weight_layout_of_the_build_cpu(tiny_artifact):
    _, manifest = tiny_artifact
    assert manifest["runtime"]["weight_layout"] == weight_layout()


def test_artifact_laid_out_for_the_other_kind_of_cpu_loads_with_a_warning(artifact_copy, tiny_pipe, caplog):
    """Weights prepacked for the other kind of CPU cost speed, not correctness: the artifact
    loads, and the log says why it is slower and what to do."""
    other = {"amx": "avx512", "avx512": "amx"}[weight_layout()]
    _edit_manifest(artifact_copy, lambda m: m["runtime"].update(weight_layout=other))
    with caplog.at_level("WARNING", logger="quantization.runtime"):
        variant = load_variant(artifact_copy, tiny_pipe)
    assert variant.precision == "int8"
    assert "weights are laid out for a CPU" in caplog.text and "quantize on a CPU like this one" in caplog.text


def test_matching_or_unrecorded_weight_layout_loads_without_a_warning(artifact_copy, tiny_pipe, caplog):
    with caplog.at_level("WARNING", logger="quantization.runtime"):
        load_variant(artifact_copy, tiny_pipe)
        _edit_manifest(artifact_copy, lambda m: m["runtime"].pop("weight_layout"))
        load_variant(artifact_copy, tiny_pipe)
    assert "laid out" not in caplog.text


def test_artifact_of_another_unet_is_refused(artifact_copy):
    with pytest.raises(ArtifactError, match="different UNet"):
        load_variant(artifact_copy, build_tiny_pipeline("sd", seed=1))


def test_artifact_of_another_format_is_refused_naming_both(artifact_copy, tiny_pipe):
    old = FORMAT - 1
    _edit_manifest(artifact_copy, lambda m: m.update(format=old))
    with pytest.raises(ArtifactError, match=f"has format {old}; this mixdiff reads format {FORMAT}"):
        load_variant(artifact_copy, tiny_pipe)


def test_missing_or_broken_manifest_is_refused(artifact_copy, tiny_pipe):
    (artifact_copy / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is not valid JSON"):
        load_variant(artifact_copy, tiny_pipe)
    (artifact_copy / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_variant(artifact_copy, tiny_pipe)


def test_a_package_that_computes_something_else_fails_the_compile_check(tiny_pipe, tiny_artifact, calibration_split):
    folder, manifest = tiny_artifact
    calib, _ = calibration_split
    package, weights = folder / "unet-g0.pt2", folder / "unet-g0.safetensors"
    own = quantize_graph(export_unet(tiny_pipe.unet, calib[0]), make_quantizer(), calib)
    assert check_compiled(own, package, weights, calib[:2]) < 1e-2
    assert manifest["timestep_groups"][0]["compiled_vs_eager_rel_mse"] < 1e-2
    other_unet = build_tiny_pipeline("sd", seed=1).unet
    other = quantize_graph(export_unet(other_unet, calib[0]), make_quantizer(), calib)
    with pytest.raises(MiscompiledError, match="disagrees with the quantized graph"):
        check_compiled(other, package, weights, calib[:2])


def test_an_artifact_calibrated_without_guidance_runs_single_latents(tiny_pipe, tiny_artifact, tmp_path):
    """A model sampled without guidance (a distilled few-step one) calls its UNet with one latent:
    its artifact is compiled for that batch instead of padding every call to a pair."""
    out = tmp_path / "quantized" / "int8-single"
    manifest = build_artifact(PTQConfig(), tiny_pipe, PROMPTS, out, replace(OPTIONS, guidance_scale=1.0))
    assert manifest["model"]["compiled_batch"] == 1
    assert tiny_artifact[1]["model"]["compiled_batch"] == 2
    assert manifest["fidelity"]["rel_mse"] < 5e-2
    variant = load_variant(out, tiny_pipe)
    sample = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = tiny_pipe.encode_prompt(["a red circle", "a blue square", "a star"], "cpu", 1, False)[0]
        fp32 = UNetGraph(tiny_pipe.unet)(sample, torch.full((3,), 500.0), text)
    together = variant(sample, torch.tensor(500), text)  # three single-latent calls
    alone = variant(sample[1:2], torch.tensor(500), text[1:2])
    assert together.shape == fp32.shape and rel_mse(together, fp32) < 5e-2
    assert torch.allclose(alone, together[1:2], atol=1e-3, rtol=1e-3)
