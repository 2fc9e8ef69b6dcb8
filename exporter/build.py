"""Which build is running: version, source revision, branch and build date.

They are baked into the package when it is built (``setup.py`` writes ``BUILD_FILE``
into the wheel and the sdist): from ``CEC_EXPORTER_REVISION`` and
``CEC_EXPORTER_BRANCH`` when the build is given them (the container image passes its
``REVISION`` and ``BRANCH`` build arguments), else from git when the source is a git
checkout, else from the sdist's own ``BUILD_FILE``. Code run from a checkout without
a build (an editable install) asks git at run time. ``unknown`` is left only for a
tree with no git history. Stdlib only: ``setup.py`` imports this at build time.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from exporter import __version__

REVISION_ENVVAR = "CEC_EXPORTER_REVISION"
BRANCH_ENVVAR = "CEC_EXPORTER_BRANCH"
BUILD_ENVVARS = (REVISION_ENVVAR, BRANCH_ENVVAR)
"""Read when the package is built, never when it runs."""
BUILD_FILE = "build.json"
"""Written into the package at build time, beside this module."""
UNKNOWN = "unknown"
_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Build:
    """Where the running code comes from: the fields ``--version`` prints."""

    revision: str = UNKNOWN
    branch: str = UNKNOWN
    date: str = UNKNOWN
    """When the package was built, UTC (ISO 8601); ``unknown`` when run from a checkout."""

    def write(self, path: Path) -> None:
        """Bake this build into ``path`` (a new file: never through a link into the source)."""
        path.unlink(missing_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Build | None:
        """The build baked into ``path``, or None if there is none (or it is unreadable)."""
        try:
            baked = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{key: str(baked[key]) for key in ("revision", "branch", "date")})
        except (OSError, ValueError, KeyError, TypeError):
            return None


@functools.cache
def running_build() -> Build:
    """The running code's build (found once per process)."""
    baked = Build.read(_PACKAGE / BUILD_FILE)
    if baked is not None:
        return baked
    return _from_git(_PACKAGE.parent, date=UNKNOWN) or Build()


def revision() -> str:
    """The source revision of the running code, as ``cec_exporter_build_info`` shows it."""
    return running_build().revision


def build_for_package(source: Path, environ: dict[str, str] | None = None) -> Build:
    """What a package built now from ``source`` is to say (``setup.py``'s one call).

    An explicit revision wins, then git, then what the source's own ``BUILD_FILE``
    says (an sdist being built into a wheel). ``SOURCE_DATE_EPOCH`` fixes the date
    for reproducible builds.
    """
    environ = dict(os.environ) if environ is None else environ
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    date = _utc(float(epoch) if epoch.isdigit() else time.time())
    found = _from_git(source, date) or Build.read(source / "exporter" / BUILD_FILE)
    found = found or Build(date=date)
    given = {name: environ.get(name, "").strip() for name in BUILD_ENVVARS}
    return Build(
        revision=given[REVISION_ENVVAR] or found.revision,
        branch=given[BRANCH_ENVVAR] or found.branch,
        date=found.date,
    )


def version_text() -> str:
    """``--version``: the fields ``cec_exporter_build_info`` carries, as node_exporter prints."""
    running = running_build()
    return (
        f"cec-phone-exporter, version {__version__} "
        f"(branch: {running.branch}, revision: {running.revision})\n"
        f"  build date:       {running.date}\n"
        f"  python version:   {platform.python_version()}\n"
        f"  platform:         {sys.platform}/{platform.machine()}"
    )


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _from_git(checkout: Path, date: str) -> Build | None:
    """The build of the git checkout at ``checkout`` (its top, not a folder inside another)."""
    described = _git(checkout, "describe", "--always", "--dirty", "--tags")
    if described is None:
        return None
    branch = _git(checkout, "rev-parse", "--abbrev-ref", "HEAD") or UNKNOWN
    return Build(revision=described, branch=branch, date=date)


def _git(checkout: Path, *args: str) -> str | None:
    """What ``git -C checkout ARGS`` prints, or None (no git, no checkout, an error)."""
    git = shutil.which("git")
    if git is None or not (checkout / ".git").exists():  # a file in a worktree
        return None
    try:
        result = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            [git, "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    printed = result.stdout.strip()
    return printed if result.returncode == 0 and printed else None
