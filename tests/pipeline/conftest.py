import pytest

from app.pipeline.loop import MixedPrecisionPipeline


@pytest.fixture(scope="session")
def tiny():
    """The tiny SD pipeline with fp32 and bf16 variants, shared by the pipeline tests."""
    return MixedPrecisionPipeline.load("tiny-random", ["fp32", "bf16"])
