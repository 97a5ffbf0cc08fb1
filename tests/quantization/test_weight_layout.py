"""What oneDNN prepacks weights for in a process: AMX kernels where the CPU has AMX and
``ONEDNN_MAX_CPU_ISA`` does not hold oneDNN below it, else AVX-512."""

from __future__ import annotations

import pytest

from quantization import runtime

AMX = {"avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    ("flags", "limit", "expected"),
    [
        (AMX, None, "amx"),
        (AMX, "AVX512_CORE_AMX", "amx"),
        (AMX, "avx10_1_512_amx", "amx"),
        (AMX, "DEFAULT", "amx"),
        (AMX, "AVX512_CORE_BF16", "avx512"),
        (AMX - {"amx_int8"}, None, "avx512"),
        ({"avx512f", "avx512_bf16"}, None, "avx512"),
    ],
)
def test_weight_layout(monkeypatch, flags, limit, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert runtime.weight_layout() == expected


def test_layout_warning_names_both_kinds_and_the_remedy(monkeypatch):
    monkeypatch.setattr(runtime, "weight_layout", lambda: "amx")
    warning = runtime.layout_warning({"runtime": {"weight_layout": "avx512"}})
    assert "laid out for a CPU without AMX, and this is a CPU with AMX" in warning
    assert "12-14% slower" in warning and "quantize on a CPU like this one" in warning
    assert runtime.layout_warning({"runtime": {"weight_layout": "amx"}}) is None
    assert runtime.layout_warning({"runtime": {}}) is None  # built before the layout was recorded
    monkeypatch.setattr(runtime, "weight_layout", lambda: "avx512")
    warning = runtime.layout_warning({"runtime": {"weight_layout": "amx"}})
    assert "laid out for a CPU with AMX, and this is a CPU without AMX" in warning
    assert "not measured on such a CPU" in warning  # the cost is only known on a CPU with AMX
