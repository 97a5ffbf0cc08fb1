"""What the API process and a worker process say to each other over the worker's pipe.

Plain picklable dataclasses, no torch and no prometheus_client: the worker reports
what happened, the API process decides what it means for jobs and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.pipeline.types import GenerationParams, GenerationResult, StepRecord


# -- API process -> worker ---------------------------------------------------------------
@dataclass(frozen=True)
class RunJob:
    number: int  # the job's number: what the worker's cancel value is compared with
    params: GenerationParams
    schedule: list[str]
    deadline: float  # time.time() after which the job fails with Timeout


#: Sent instead of a job: finish and exit.
STOP = None


# -- worker -> API process ---------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The worker loaded the model, warmed up, and waits for jobs."""

    pid: int
    info: dict  # ModelInfo as a dict
    precisions: list[str]
    schedulers: list[str]
    rss_bytes: int


@dataclass(frozen=True)
class StartFailed:
    """The worker could not load the model; it exits and is not restarted."""

    message: str


@dataclass(frozen=True)
class Step:
    number: int
    record: StepRecord


@dataclass(frozen=True)
class Done:
    number: int
    result: GenerationResult
    rss_bytes: int


@dataclass(frozen=True)
class Failed:
    number: int
    type: str  # a MixdiffError type
    message: str
    param: str | None
    rss_bytes: int
