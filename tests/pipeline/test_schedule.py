import pytest
from pydantic import TypeAdapter

from app.engine.schedule import PrecisionSpec, SplitSchedule, describe, resolve
from app.errors import InvalidRequest

AVAILABLE = ["fp32", "bf16", "int8"]
parse = TypeAdapter(PrecisionSpec).validate_python


def test_shorthand_covers_every_step():
    assert resolve(parse("bf16"), 4, AVAILABLE) == ["bf16"] * 4


def test_split_form_puts_high_precision_first_and_last():
    spec = parse({"high": "bf16", "low": "int8", "first": 2, "last": 1})
    assert isinstance(spec, SplitSchedule)
    assert resolve(spec, 6, AVAILABLE) == ["bf16", "bf16", "int8", "int8", "int8", "bf16"]


def test_split_form_may_cover_all_steps():
    assert resolve(parse({"first": 2, "last": 2}), 4, AVAILABLE) == ["bf16"] * 4


def test_explicit_list_is_taken_as_is():
    steps = ["fp32", "int8", "bf16"]
    assert resolve(parse(steps), 3, AVAILABLE) == steps


@pytest.mark.parametrize(
    "spec, steps, needle",
    [
        ({"high": "bf16", "low": "int8", "first": 3, "last": 3}, 5, "more than the 5 steps"),
        (["bf16", "bf16"], 3, "lists 2 steps but the request has steps=3"),
        ("fp16", 3, "'fp16' is not available for this model; available: bf16, fp32, int8"),
        ({"high": "bf16", "low": "int4", "first": 1, "last": 1}, 3, "'int4' is not available"),
    ],
)
def test_bad_schedules_say_what_to_change(spec, steps, needle):
    with pytest.raises(InvalidRequest) as err:
        resolve(parse(spec), steps, AVAILABLE)
    assert needle in err.value.message
    assert err.value.param == "precision"
    assert err.value.status == 422


def test_split_form_rejects_unknown_keys_and_negative_counts():
    with pytest.raises(ValueError):
        SplitSchedule.model_validate({"first": 1, "last": 1, "middle": 2})
    with pytest.raises(ValueError):
        SplitSchedule.model_validate({"first": -1, "last": 1})


def test_describe_compacts_runs():
    assert describe(["bf16", "bf16", "int8", "int8", "int8", "bf16"]) == "bf16×2 int8×3 bf16×1"
