"""Fault answers shared by both API endpoints: error statuses and broken bodies."""

from collections.abc import Iterator

from exporter.simulator.faults import DEFAULT_HUGE_BYTES, DEFAULT_HUGE_RET_MSG_BYTES, Fault
from exporter.simulator.reply import DROP, Reply, error_reply, json_reply

_HTML_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream CEC service did not answer.</p></body></html>"
)
_MALFORMED = {
    "queryPhone": b'{"retCode": "0", "result": {',
    "tokenByAkSk": b'{"AccessToken": "abc", "Expires": ',
}
_PADDING_BLOCK = b"x" * 65536


def broken_answer(fault: Fault, api: str) -> Reply:
    """The answer a non-delay, non-modifier fault stands for."""
    kind = fault.kind
    if kind == "ret_code":
        code = str(fault.value) if fault.value is not None else "1"
        return json_reply({"retCode": code, "retMsg": f"simulated failure (retCode {code})"})
    if kind == "http_status":
        status = int(fault.value) if fault.value is not None else 500
        reply = error_reply(status, f"simulated HTTP {status}")
        if fault.retry_after is not None:
            seconds = fault.retry_after
            text = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
            return Reply(status=reply.status, body=reply.body, headers=(("Retry-After", text),))
        return reply
    if kind == "malformed_json":
        return Reply(body=_MALFORMED[api])
    if kind == "html":
        status = int(fault.value) if fault.value is not None else 200
        return Reply(status=status, body=_HTML_PAGE, content_type="text/html; charset=utf-8")
    if kind == "truncated":
        partial = _MALFORMED[api]
        return Reply(body=partial, declared_length=len(partial) + 4096, close=True)
    if kind == "not_object":
        return Reply(body=b'"oops"' if fault.value == "string" else b'[{"retCode": "0"}]')
    if kind == "result_wrong_type":
        result: object = [] if fault.value == "list" else "oops"
        return json_reply({"retCode": "0", "retMsg": "successfully", "result": result})
    if kind == "huge":
        return huge_answer(int(fault.value) if fault.value is not None else DEFAULT_HUGE_BYTES)
    if kind == "huge_ret_msg":
        size = int(fault.value) if fault.value is not None else DEFAULT_HUGE_RET_MSG_BYTES
        return _streamed(b'{"retCode": "1", "retMsg": "query failed: ', size, b'"}')
    if kind == "close":
        return DROP
    raise ValueError(f"fault kind {kind!r} is not an answer")  # a bug: callers filter kinds


def huge_answer(size: int) -> Reply:
    """A valid JSON body of exactly ``size`` bytes (or the minimum), streamed in 64 KiB blocks."""
    head = b'{"retCode": "0", "retMsg": "successfully", "padding": "'
    tail = b'", "result": {"total": 0, "phone": []}}'
    return _streamed(head, max(size - len(head) - len(tail), 0), tail)


def _streamed(head: bytes, padding: int, tail: bytes) -> Reply:
    """``head``, ``padding`` bytes of ``x``, ``tail``: a body streamed in 64 KiB blocks."""

    def chunks() -> Iterator[bytes]:
        yield head
        left = padding
        while left > 0:
            block = _PADDING_BLOCK if left >= len(_PADDING_BLOCK) else _PADDING_BLOCK[:left]
            yield block
            left -= len(block)
        yield tail

    return Reply(declared_length=len(head) + padding + len(tail), chunks=chunks())
