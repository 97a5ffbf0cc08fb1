"""For the whole suite: the mixdiff kernels are built inside the repository, in ``build/kernels``
(ignored by git, removed by ``make clean``), not in the user's ``~/.cache``; the servers and
workers the tests start inherit it."""

from __future__ import annotations

import os
from pathlib import Path

from kernels.build import ENV

os.environ.setdefault(ENV, str(Path(__file__).resolve().parent / "build" / "kernels"))
