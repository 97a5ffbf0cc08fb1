"""A fix for a handle leak in AOTInductor's C++ wrapper code (torch 2.13), applied while
``quantize`` compiles its packages.

``CppWrapperCpu.val_to_arg_str`` spells an optional tensor argument by spelling the
tensor twice and using the second. Where the tensor is a view with its buffer's own
layout, spelling it emits a new tensor handle, so the first spelling leaves a handle that
nothing releases: the buffer it holds outlives every call. INT8 linears with the residual
addition folded in (``onednn.qlinear_pointwise.binary_tensor``, whose ``other`` is a
``Tensor?``) take the residual so: an SD 1.5 package leaked every attention's residual
on every step until the worker ran out of memory (docs/notes/quantization-design.md,
"Two leaks in AOTInductor"). Inside
``releasing_optional_tensor_handles()`` the tensor is spelled once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu


@contextlib.contextmanager
def releasing_optional_tensor_handles() -> Iterator[None]:
    """AOTInductor compiles within this emit one handle per optional tensor argument, released after the call."""
    original = CppWrapperCpu.val_to_arg_str

    def val_to_arg_str(self, val, type_=None) -> str:
        if val is not None and isinstance(type_, torch.OptionalType):
            element = type_.getElementType()
            if isinstance(element, torch.TensorType):  # as the original's own branch, without the first spelling
                return f"&temporary_reference({original(self, val, element)}.get())"
        return original(self, val, type_)

    CppWrapperCpu.val_to_arg_str = val_to_arg_str
    try:
        yield
    finally:
        CppWrapperCpu.val_to_arg_str = original
