"""How every ``fellrec`` command reports a mistake: one line, ``fellrec: error: <message>``.

The errors a user can act on (a bad setting, path or file: ``ValueError``, ``OSError`` and YAML
errors) end a command with that line and exit status 2; ``FELLREC_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback


def report_error(error: BaseException) -> None:
    """Print ``fellrec: error: <message>`` (the traceback too when ``FELLREC_DEBUG`` is set)."""
    if os.environ.get("FELLREC_DEBUG"):
        traceback.print_exc()
    print(f"fellrec: error: {error}", file=sys.stderr)
