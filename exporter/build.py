"""Which build is running: the version, and the source revision when it can be known.

The revision comes from ``CEC_EXPORTER_REVISION`` (the container image sets it
from its ``REVISION`` build argument), else from ``git describe`` when the
package runs from a git checkout, else it is ``unknown``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REVISION_ENVVAR = "CEC_EXPORTER_REVISION"
UNKNOWN = "unknown"
_CHECKOUT = Path(__file__).resolve().parent.parent


@functools.cache
def revision() -> str:
    """The source revision of the running code (asked once per process)."""
    given = os.environ.get(REVISION_ENVVAR, "").strip()
    if given:
        return given
    return _git_describe() or UNKNOWN


def _git_describe() -> str | None:
    """``git describe --always --dirty`` of the checkout the package runs from, if any."""
    git = shutil.which("git")
    if git is None or not (_CHECKOUT / ".git").exists():  # a file in a worktree
        return None
    try:
        result = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            [git, "-C", str(_CHECKOUT), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    described = result.stdout.strip()
    return described if result.returncode == 0 and described else None
