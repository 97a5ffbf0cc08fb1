import pytest

from app.settings import Settings


@pytest.mark.parametrize("raw", ["fp32, bf16", '["fp32", "bf16"]'])
def test_precisions_from_the_environment_comma_separated_or_json(monkeypatch, raw):
    monkeypatch.setenv("MIXDIFF_PRECISIONS", raw)
    assert Settings().precisions == ["fp32", "bf16"]


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="worker_count"):
        Settings(worker_count=2)
