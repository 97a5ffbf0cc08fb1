"""The worker process: pinned to its cores, holds the pipeline, runs one job at a time.

``main`` is the target of a ``spawn``ed process. It pins the process and sets the
OpenMP/MKL thread counts *before* torch is imported (both are read once, when the
libraries load), loads and warms up the pipeline, says ``Ready``, then serves jobs
from its pipe until told to stop. Every step it reports a ``Step`` and checks the
job's cancel flag and deadline, so a cancelled or late job frees the worker within
one step. This module imports nothing heavy at the top, so the spawn stays clean.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

from app.engine.messages import STOP, Done, Failed, Ready, RunJob, StartFailed, Step
from app.errors import Cancelled, MixdiffError, Timeout
from app.settings import Settings
from common import malloc

log = logging.getLogger("mixdiff.worker")


def _pin(cores: list[int]) -> None:
    os.sched_setaffinity(0, cores)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(len(cores))


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


#: Longest log message a worker writes: libraries quote whole prompts (diffusers, the part
#: of a long prompt its text encoder drops), and a prompt may be tens of kilobytes.
MAX_LOG_MESSAGE = 500


class _CutLongMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOG_MESSAGE:
            record.msg, record.args = f"{message[:MAX_LOG_MESSAGE]}... ({len(message)} characters)", None
        return True


def _cut_long_messages(*loggers: logging.Logger) -> None:
    """Cut every message the handlers of ``loggers`` write to ``MAX_LOG_MESSAGE`` characters."""
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(_CutLongMessages())


def main(index: int, cores: list[int], settings: Settings, conn: Connection, cancel: Synchronized) -> None:
    """Run worker ``index`` on ``cores``; ``cancel.value`` holds the number of a job to cancel."""
    _pin(cores)
    # The API process handles SIGINT/SIGTERM and stops workers through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(
        level=settings.log_level.upper(), format=f"%(asctime)s worker{index}[%(process)d] %(levelname)s %(message)s"
    )
    try:
        import torch

        torch.set_num_threads(len(cores))
        from dataclasses import asdict

        from app.pipeline.loop import MixedPrecisionPipeline

        _cut_long_messages(logging.getLogger(), logging.getLogger("diffusers"))  # diffusers logs on its own
        pipeline = MixedPrecisionPipeline.load(
            settings.model,
            settings.precisions,
            compile=settings.compile,
            fused_attention=settings.fused_attention,
            vae_precision=settings.vae_precision,
            text_encoder_precision=settings.text_encoder_precision,
        )
        pipeline.warmup(settings.warmup_steps)
    except Exception as exc:  # the API process shows it; the worker is not restarted
        log.error("loading %s failed:\n%s", settings.model, traceback.format_exc())
        conn.send(StartFailed(f"worker {index} could not load model {settings.model!r}: {type(exc).__name__}: {exc}"))
        return
    malloc.release()  # what loading and warming up freed
    log.info("ready on cores %s with precisions %s", cores, pipeline.precisions)
    conn.send(Ready(os.getpid(), asdict(pipeline.info), pipeline.precisions, pipeline.schedulers, _rss_bytes()))

    try:
        while (job := conn.recv()) is not STOP:
            conn.send(_run(pipeline, job, conn, cancel))
            malloc.release()  # between jobs, after the answer: what the job freed goes back
    except (EOFError, BrokenPipeError):  # the API process went away: nobody is left to serve
        log.warning("the API process closed the pipe; exiting")


def _run(pipeline, job: RunJob, conn: Connection, cancel: Synchronized) -> Done | Failed:
    def on_step(record) -> None:
        conn.send(Step(job.number, record))
        _check(job, cancel)

    try:
        _check(job, cancel)  # it may have been cancelled or timed out while queued
        result = pipeline.generate(job.params, job.schedule, on_step)
    except MixdiffError as exc:
        return Failed(job.number, exc.type, exc.message, exc.param, _rss_bytes())
    except Exception as exc:
        log.error("job %d failed:\n%s", job.number, traceback.format_exc())
        message = f"generation failed: {type(exc).__name__}: {exc}"
        return Failed(job.number, "generation_failed", message, None, _rss_bytes())
    return Done(job.number, result, _rss_bytes())


def _check(job: RunJob, cancel: Synchronized) -> None:
    if cancel.value == job.number:
        raise Cancelled("the job was cancelled")
    if time.time() > job.deadline:
        raise Timeout("the request took longer than request_timeout")
