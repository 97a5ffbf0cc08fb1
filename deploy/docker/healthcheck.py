"""Container health check: exit 0 when ``/health/ready`` answers 200, 1 otherwise.

The image has no curl; this runs with the image's Python. The port comes from the
same settings the server reads (``MIXDIFF_PORT``), and the check always goes to
loopback, whatever address the server listens on.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.settings import Settings


def main() -> int:
    url = f"http://127.0.0.1:{Settings().port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
