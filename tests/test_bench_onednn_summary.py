"""``bench/onednn_summary.py``: oneDNN's verbose log read back into time and rates per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from bench.onednn_summary import by_kind, multiply_accumulates, record

CONV = (
    "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_vnni,forward_inference,"
    "src:u8::blocked:acdb::f0 wei:s8:a:blocked:AcdB64a4b::f8:zpm1 dst:bf16::blocked:acdb::f0,attr-scratchpad:user,"
    "alg:convolution_direct,mb2_ic320oc320_ih64oh64kh3sh1dh0ph1_iw64ow64kw3sw1dw0pw1,{ms}"
)
MATMUL = (
    "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_vnni,undef,"
    "src:u8:a:blocked:ab::f0 wei:s8::blocked:BA16a64b4a::f8:zpm2 dst:bf16:a:blocked:ab::f0,attr-scratchpad:user,,"
    "8192x320:320x2560,{ms}"
)


def test_multiply_accumulates_of_convolutions_and_matmuls():
    conv = "mb2_ic320oc320_ih64oh64kh3sh1dh0ph1_iw64ow64kw3sw1dw0pw1"
    assert multiply_accumulates("convolution", conv) == 2 * 320 * 320 * 64 * 64 * 3 * 3
    grouped = "g32" + conv.replace("kh3", "kh1").replace("kw3", "kw1")  # each output reads 320 / 32 channels
    assert multiply_accumulates("convolution", grouped) == 2 * 320 * 10 * 64 * 64
    assert multiply_accumulates("matmul", "8192x320:320x2560") == 8192 * 320 * 2560
    assert multiply_accumulates("matmul", "8192x320:320x2560:8192x2560") == 8192 * 320 * 2560
    assert multiply_accumulates("matmul", "16x77x40:16x40x4096") == 16 * 77 * 40 * 4096


def test_shapes_lists_each_problem_with_its_rate(tmp_path):
    log = tmp_path / "verbose.log"
    before = CONV.format(ms=1000.0)  # before the mark: warm-up, not counted
    log.write_text("\n".join([before, "MARK", CONV.format(ms=20.0), CONV.format(ms=10.0), MATMUL.format(ms=40.0)]))
    run = [sys.executable, "-m", "bench.onednn_summary", str(log), "--shapes"]
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(run, cwd=repo, capture_output=True, text=True, check=True).stdout.splitlines()
    conv_rate = round(2 * 2 * 320 * 320 * 64 * 64 * 9 / 0.030 / 1e9)
    matmul_rate = round(8192 * 320 * 2560 / 0.040 / 1e9)
    assert out[0].split()[:7] == ["40.0", "ms", "57.1%", "1", "calls", str(matmul_rate), "GMAC/s"]  # costliest
    assert f"{conv_rate} GMAC/s" in out[1] and out[1].split()[3] == "2"
    assert out[-1].startswith("     70.0 ms in all")


def test_by_kind_sums_each_primitive_kind_and_source_type_after_the_mark():
    lines = [CONV.format(ms=1000.0), "MARK", CONV.format(ms=20.0), "some other output", CONV.format(ms=10.0),
             MATMUL.format(ms=40.0).replace("src:u8", "src:bf16")]  # fmt: skip
    assert by_kind("\n".join(lines)) == {
        "matmul bf16": {"calls": 1, "ms": 40.0},
        "convolution u8": {"calls": 2, "ms": 30.0},
    }


def test_record_takes_onednns_log_of_one_call_in_the_process(capfd):
    x = torch.randn(1, 16, 32, 32).bfloat16().to(memory_format=torch.channels_last)
    weight = torch.randn(16, 16, 3, 3).bfloat16().to(memory_format=torch.channels_last)
    log = record(lambda: torch.nn.functional.conv2d(x, weight, padding=1))
    assert by_kind(log)["convolution bf16"]["calls"] == 1  # ATen ran it through oneDNN, and it was logged
    print("after")  # the process's standard output is its own again
    assert capfd.readouterr().out == "after\n"
