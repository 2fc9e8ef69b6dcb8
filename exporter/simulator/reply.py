"""What a route answers, including the broken answers faults call for."""

import json
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """An HTTP answer; ``drop`` closes without one, ``declared_length`` may lie, ``chunks`` stream.

    With ``chunks`` set, ``declared_length`` is the exact streamed size.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    declared_length: int | None = None
    chunks: Iterable[bytes] | None = None
    close: bool = False
    drop: bool = False


DROP = Reply(drop=True, close=True)


def json_reply(obj: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """``obj`` as a JSON body."""
    return Reply(status=status, body=json.dumps(obj).encode(), headers=headers)


def error_reply(status: int, message: str) -> Reply:
    """A small JSON error body in the gateway's style."""
    return json_reply({"error_code": f"SIM.{status}", "error_msg": message}, status)
