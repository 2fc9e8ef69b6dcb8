"""Build hooks; the project's metadata is in pyproject.toml.

- An interpreter older than ``requires-python`` is told which Python the project needs
  before pip goes looking for dependencies that do not exist for it.
- The build's revision, branch and date are baked into the wheel and the sdist
  (``exporter/build.json``, see ``exporter/build.py``), so an installed package
  knows which build it is without a checkout beside it.
"""

import platform
import sys

# Keep in step with requires-python in pyproject.toml (tests/test_lock.py checks it).
if sys.version_info < (3, 11):  # noqa: UP036 (the point: refuse older ones)
    sys.exit(
        f"cec-phone-exporter needs Python 3.11 or newer; this is Python "
        f"{platform.python_version()} ({sys.executable}). Create the venv with a newer "
        f"python3, e.g. python3.11 -m venv .venv"
    )

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

SOURCE = Path(__file__).resolve().parent
sys.path.insert(0, str(SOURCE))
from exporter.build import BUILD_FILE, build_for_package  # noqa: E402


class BuildPy(build_py):
    """Copies the package, then bakes the build into it (not for an editable install:
    code run from the checkout asks git, and stays current as the checkout moves)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            build_for_package(SOURCE).write(Path(self.build_lib) / "exporter" / BUILD_FILE)


class Sdist(sdist):
    """Bakes the build into the sdist, whose wheel is built where there is no .git."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        build_for_package(SOURCE).write(Path(base_dir) / "exporter" / BUILD_FILE)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
