"""A worker's log never carries a whole prompt: libraries quote the part of a long prompt
the text encoder drops, and a prompt may be tens of kilobytes."""

from __future__ import annotations

import io
import logging

from app.engine.worker import MAX_LOG_MESSAGE, _cut_long_messages


def test_long_messages_are_cut_and_short_ones_kept():
    stream = io.StringIO()
    logger = logging.getLogger("mixdiff.test.cut")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    _cut_long_messages(logger)
    logger.warning("dropped: %s", "red circle " * 5000)
    logger.warning("short %s", "message")
    long_line, short_line = stream.getvalue().splitlines()
    assert len(long_line) < MAX_LOG_MESSAGE + 40
    assert long_line.endswith(f"... ({len('dropped: ') + 55000} characters)")
    assert short_line == "short message"
