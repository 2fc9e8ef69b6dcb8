"""Put the repository's ``tests/`` on ``sys.path``: the bench scripts' helpers are there.

Every script does ``import _path`` before ``from support import ...``: Python puts the
script's own folder (``bench/``) first on ``sys.path``, so this module is found.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
