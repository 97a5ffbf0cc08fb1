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


@pytest.mark.parametrize("first, last", [(3, 3), (5, 0), (0, 9)])
def test_split_form_whose_ends_overlap_runs_every_step_high(first, last):
    assert resolve(parse({"high": "fp32", "low": "int8", "first": first, "last": last}), 5, AVAILABLE) == ["fp32"] * 5


def test_split_form_checks_its_low_precision_even_where_no_step_runs_it():
    with pytest.raises(InvalidRequest, match="'int4' is not available"):
        resolve(parse({"high": "bf16", "low": "int4", "first": 2, "last": 2}), 3, AVAILABLE)


def test_explicit_list_is_taken_as_is():
    steps = ["fp32", "int8", "bf16"]
    assert resolve(parse(steps), 3, AVAILABLE) == steps


@pytest.mark.parametrize(
    "spec, steps, needle",
    [
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


@pytest.mark.parametrize(
    "spec, steps, message",
    [
        ("int4", 2, "precision 'int4' is not available for this model; available: bf16, fp32, int8 (int4: no kernel)"),
        (
            {"high": "int4", "low": "fp32", "first": 2, "last": 2},
            3,
            "precision 'int4' is not available for this model; available: bf16, fp32, int8 (int4: no kernel)",
        ),
        (["fp32", "fp8"], 2, "precision 'fp8' is not available for this model; available: bf16, fp32, int8"),
    ],
)
def test_errors_say_why_the_model_lacks_a_precision_they_name(spec, steps, message):
    with pytest.raises(InvalidRequest) as err:
        resolve(parse(spec), steps, AVAILABLE, {"int4": "no kernel", "fp16": "no fp16 kernel"})
    assert (err.value.message, err.value.param) == (message, "precision")


def test_split_form_rejects_unknown_keys_and_negative_counts():
    with pytest.raises(ValueError):
        SplitSchedule.model_validate({"first": 1, "last": 1, "middle": 2})
    with pytest.raises(ValueError):
        SplitSchedule.model_validate({"first": -1, "last": 1})


def test_describe_compacts_runs():
    assert describe(["bf16", "bf16", "int8", "int8", "int8", "bf16"]) == "bf16×2 int8×3 bf16×1"
