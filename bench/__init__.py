"""Benchmark harnesses: ``unet_step`` (``mixdiff bench``: one UNet step per precision,
timed interleaved), ``service`` (``mixdiff bench --service``: the server end to end), and
the profiling scripts beside them, each run as ``python bench/<name>.py``. Results are
written next to them, each with the command that produced it."""
