"""Long work done in steps, so that the event loop serves between them.

De-duplicating or comparing a million phones takes about half a second of Python: done
in one go on the collection loop, it would hold up every scrape and ``/-/healthy``. Such
work is written as an iterator that gives None after each step of about a millisecond
and its result last; ``in_steps`` runs it on the loop, ``at_once`` outside one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TypeVar

_T = TypeVar("_T")


async def in_steps(steps: Iterable[_T | None]) -> _T:
    """The last item of ``steps``, letting the loop run other tasks after each step."""
    found: _T | None = None
    for found in steps:
        if found is None:
            await asyncio.sleep(0)
    assert found is not None, "the steps gave no result"
    return found


def at_once(steps: Iterable[_T | None]) -> _T:
    """The last item of ``steps``, every step run now (no loop to let through)."""
    *_, found = steps
    assert found is not None, "the steps gave no result"
    return found
