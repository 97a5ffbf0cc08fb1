"""Precision schedules: which UNet variant runs at which denoising step.

Three input forms, one resolved form (a list with one precision name per step):

* a shorthand, ``"bf16"``: every step at that precision;
* the split form of the paper, ``{"high": "bf16", "low": "int8", "first": 5, "last": 5}``:
  ``high`` for the first and last k steps, ``low`` between;
* an explicit list, ``["bf16", "int8", ...]``, one entry per step.

``resolve`` checks the schedule against the step count and the variants the loaded
model offers, and raises ``InvalidRequest`` on ``precision`` naming what to change
(and why the model lacks a precision it names, when it is told). A split schedule whose
ends cover every step (``first + last >= steps``) runs every step at ``high``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import groupby
from typing import Annotated, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from app.errors import InvalidRequest

PARAM = "precision"


def _number(value):
    """JSON's integers, ``2.0`` among them as JSON Schema counts it; never ``true`` or ``"2"``."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def whole_number(**bounds):
    """The type of an integer of a request body within ``bounds`` (``ge``, ``le``): a number
    with no fraction, not a bool or a string (the bounds go first, or pydantic cannot write
    them into the JSON schema)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_number)]


class SplitSchedule(BaseModel):
    """High precision for the first and last steps, low precision for the steps between."""

    model_config = ConfigDict(extra="forbid")

    high: str = Field("bf16", description="precision of the first and last steps")
    low: str = Field("int8", description="precision of the steps between")
    first: whole_number(ge=0) = Field(description="number of leading steps at `high`")
    last: whole_number(ge=0) = Field(description="number of trailing steps at `high`")


PrecisionSpec = Annotated[
    Union[str, SplitSchedule, Annotated[list[str], Field(min_length=1)]],
    Field(
        description='a precision name ("bf16"), a split schedule '
        '({"high": "bf16", "low": "int8", "first": 5, "last": 5}), or one precision per step',
        examples=["bf16", {"high": "bf16", "low": "int8", "first": 2, "last": 2}],
    ),
]


def precisions_named(spec: PrecisionSpec) -> set[str]:
    """Every precision ``spec`` names."""
    if isinstance(spec, str):
        return {spec}
    if isinstance(spec, SplitSchedule):
        return {spec.high, spec.low}
    return set(spec)


def _invalid(message: str, named: Collection[str], unavailable: Mapping[str, str] | None) -> InvalidRequest:
    """``InvalidRequest`` on the schedule, with the reason of each ``named`` precision the model lacks."""
    why = [f"{name}: {reason}" for name, reason in (unavailable or {}).items() if name in named]
    return InvalidRequest(f"{message} ({'; '.join(why)})" if why else message, param=PARAM)


def resolve(
    spec: PrecisionSpec, steps: int, available: Collection[str], unavailable: Mapping[str, str] | None = None
) -> list[str]:
    """The per-step precision list for ``steps`` steps, checked against ``available``;
    ``unavailable`` (precision -> why the model lacks it) explains the precisions an error names."""
    if isinstance(spec, str):
        per_step = [spec] * steps
    elif isinstance(spec, SplitSchedule):
        low = max(steps - spec.first - spec.last, 0)  # ends that meet cover every step
        first = min(spec.first, steps - low)
        per_step = [spec.high] * first + [spec.low] * low + [spec.high] * (steps - first - low)
    else:
        if len(spec) != steps:
            raise InvalidRequest(
                f"precision schedule lists {len(spec)} steps but the request has steps={steps}",
                param=PARAM,
            )
        per_step = list(spec)
    unknown = sorted(precisions_named(spec) - set(available))
    if unknown:
        raise _invalid(
            f"precision {', '.join(map(repr, unknown))} is not available for this model; "
            f"available: {', '.join(sorted(available))}",
            unknown,
            unavailable,
        )
    return per_step


def describe(per_step: list[str]) -> str:
    """A compact human form of a resolved schedule, e.g. ``"bf16×2 int8×6 bf16×2"``."""
    return " ".join(f"{name}×{len(list(run))}" for name, run in groupby(per_step))
