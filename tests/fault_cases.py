"""The fault matrix's cases: each fault the CEC API can show, and what the exporter must report.

Used by ``test_faults.py``; kept apart so the harness and the data each stay readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator import Fault

Q, T = "queryPhone", "tokenByAkSk"
SCRAPE_TIMEOUT = 3.0
# SPEC section 6, copied (not imported: a test must not trust the code's own list):
# why a collection failed, the reason label of cec_collection_failures_total.
REASONS = (
    "ret_code",
    "http_error",
    "network_error",
    "invalid_response",
    "incomplete",
    "page_limit",
    "credentials",
    "deadline",
    "budget",
)
# Page 1 is read only after page 0 and page 2 only after page 1: exact request counts.
LATER = {"max_concurrency": 1}


@dataclass(frozen=True)
class Case:
    """One fault and what the exporter must show for it."""

    id: str
    faults: tuple[Fault, ...]
    requests: dict[str, int]
    cause: str = ""
    """Regex the warning must match; empty for faults the exporter rides out (cec_up 1)."""
    http_errors: dict[str, int] = field(default_factory=dict)
    ret_codes: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    tokens_issued: int | None = None
    scrape_timeout: float = SCRAPE_TIMEOUT
    reason: str = ""
    """The ``cec_collection_failures_total`` reason counted once; empty when up."""

    @property
    def up(self) -> bool:
        return not self.cause


def _ret_code_cases() -> list[Case]:
    cases = [
        Case(
            f"retcode-{code}-page-{page}",
            (Fault("ret_code", pages=(page,), value=str(code)),),
            {f"{T}:success": 1, f"{Q}:ret_code_error": 1} | ({f"{Q}:success": 1} if page else {}),
            rf"retCode {code}\b",
            ret_codes={f"{Q}:{code}": 1},
            settings=LATER,
            reason="ret_code",
        )
        for code in range(1, 6)
        for page in (0, 1)
    ]
    odd = [("E_VERY_LONG_CODE_42", "other"), ("9 9", "other"), ("\u00e9rr", "other")]
    odd += [("CEC.0001", "CEC.0001"), ("123456789", "other"), ("-1", "-1")]
    cases += [
        Case(
            f"retcode-label-{label}-for-{code!r}",
            (Fault("ret_code", value=code),),
            {f"{T}:success": 1, f"{Q}:ret_code_error": 1},
            rf"retCode {re.escape(code)}",
            ret_codes={f"{Q}:{label}": 1},
            reason="ret_code",
        )
        for code, label in odd
    ]
    return cases


def _http_cases() -> list[Case]:
    cases: list[Case] = []
    # Not retried: docs/scaling.md names exactly 429, 500, 502, 503 and 504 as retried.
    for status, page in ((400, 0), (403, 1), (404, 0), (404, 1), (501, 1)):
        cases.append(
            Case(
                f"http-{status}-page-{page}",
                (Fault("http_status", pages=(page,), value=status),),
                {f"{T}:success": 1, f"{Q}:http_error": 1} | ({f"{Q}:success": 1} if page else {}),
                rf"HTTP {status}\b",
                http_errors={f"{Q}:{status}": 1},
                settings=LATER,
                reason="http_error",
            )
        )
    for page in (0, 1):  # 401: the token is renewed once, then the failure counts
        cases.append(
            Case(
                f"http-401-persistent-page-{page}",
                (Fault("http_status", pages=(page,), value=401),),
                {f"{T}:success": 2, f"{Q}:http_error": 2} | ({f"{Q}:success": 1} if page else {}),
                r"HTTP 401\b",
                http_errors={f"{Q}:401": 2},
                settings=LATER,
                tokens_issued=2,
                reason="http_error",  # the token endpoint took key and secret: no credentials
            )
        )
    cases.append(
        Case(
            "http-401-cured-by-a-new-token",
            (Fault("http_status", pages=(1,), value=401, times=1),),
            {f"{T}:success": 2, f"{Q}:http_error": 1, f"{Q}:success": 3},
            http_errors={f"{Q}:401": 1},
            settings=LATER,
            tokens_issued=2,
        )
    )
    # Retried statuses: 429 (with Retry-After), 500, 502 (a gateway's HTML page), 503, 504.
    retried = [
        ("429", Fault("http_status", value=429, retry_after=0.2)),
        ("500", Fault("http_status", value=500)),
        ("502", Fault("html", value=502)),
        ("503", Fault("http_status", value=503)),
        ("504", Fault("http_status", value=504)),
    ]
    for status, fault in retried:
        for page in (0, 1) if status == "500" else (1,):
            persistent = Fault(fault.kind, pages=(page,), value=fault.value, retry_after=0.2)
            cases.append(
                Case(
                    f"http-{status}-persistent-page-{page}",
                    (persistent,),
                    {f"{T}:success": 1, f"{Q}:http_error": 3}
                    | ({f"{Q}:success": 1} if page else {}),
                    rf"HTTP {status}\b",
                    http_errors={f"{Q}:{status}": 3},
                    settings=LATER,
                    reason="http_error",
                )
            )
        passing = Fault(fault.kind, pages=(1,), value=fault.value, retry_after=0.2, times=2)
        cases.append(
            Case(
                f"http-{status}-twice-then-fine",
                (passing,),
                {f"{T}:success": 1, f"{Q}:http_error": 2, f"{Q}:success": 3},
                http_errors={f"{Q}:{status}": 2},
                settings=LATER,
            )
        )
    cases.append(
        Case(
            "http-429-retry-after-1s-honoured",
            (Fault("http_status", pages=(0,), value=429, retry_after=1, times=1),),
            {f"{T}:success": 1, f"{Q}:http_error": 1, f"{Q}:success": 3},
            http_errors={f"{Q}:429": 1},
        )
    )
    cases.append(  # a wait that cannot fit in the deadline is not started
        Case(
            "http-429-retry-after-beyond-the-deadline",
            (Fault("http_status", value=429, retry_after=30),),
            {f"{T}:success": 1, f"{Q}:http_error": 1},
            r"HTTP 429\b",
            http_errors={f"{Q}:429": 1},
            reason="http_error",
        )
    )
    return cases


def _token_cases() -> list[Case]:
    return [
        Case(
            "token-http-500",
            (Fault("http_status", api=T, value=500),),
            {f"{T}:http_error": 3},
            r"HTTP 500\b",
            http_errors={f"{T}:500": 3},
            reason="http_error",
        ),
        Case(
            "token-http-500-twice-then-fine",
            (Fault("http_status", api=T, value=500, times=2),),
            {f"{T}:http_error": 2, f"{T}:success": 1, f"{Q}:success": 3},
            http_errors={f"{T}:500": 2},
        ),
        Case(
            "token-connection-dropped",
            (Fault("close", api=T),),
            {f"{T}:network_error": 3},
            r"[Dd]isconnected",
            reason="network_error",
        ),
        Case(
            "token-without-access-token",
            (Fault("no_access_token", api=T),),
            {f"{T}:invalid_response": 1},
            r"AccessToken",
            reason="invalid_response",
        ),
        Case(
            "token-non-numeric-expires",
            (Fault("bad_expires", api=T),),
            {f"{T}:invalid_response": 1},
            r"Expires",
            reason="invalid_response",
        ),
        Case(
            "token-malformed-json",
            (Fault("malformed_json", api=T),),
            {f"{T}:invalid_response": 1},
            r"not valid JSON",
            reason="invalid_response",
        ),
        Case(
            "token-endpoint-hangs",
            (Fault("hang", api=T),),
            {f"{T}:timeout": 1},
            r"deadline",
            settings={"timeout_seconds": 1},
            reason="deadline",
        ),
    ]


def _body_cases() -> list[Case]:
    def invalid(name: str, fault: Fault, cause: str, **extra: Any) -> Case:
        page = (fault.pages or (0,))[0]  # the pages before it were read fine, one at a time
        before = {f"{Q}:success": page} if page else {}
        return Case(
            name,
            (fault,),
            {f"{T}:success": 1, f"{Q}:invalid_response": 1} | before,
            cause,
            reason="invalid_response",
            **({"settings": LATER} | extra),
        )

    return [
        invalid("malformed-json", Fault("malformed_json"), r"not valid JSON"),
        invalid("html-error-page-200", Fault("html", pages=(1,)), r"HTML"),
        invalid("not-object-list", Fault("not_object", value="list"), r"JSON list"),
        invalid("not-object-string", Fault("not_object", pages=(1,), value="string"), r"JSON str"),
        invalid("result-is-a-list", Fault("result_wrong_type", value="list"), r"result is"),
        invalid(
            "result-is-a-string",
            Fault("result_wrong_type", pages=(2,), value="string"),
            r"result is",
        ),
        invalid(
            "huge-over-a-small-cap",
            Fault("huge", pages=(3,), value=100_000),
            r"4096-byte cap",
            settings={"max_concurrency": 1, "page_size": 20, "max_response_bytes": 4096},
        ),
        invalid("huge-over-the-default-cap", Fault("huge"), r"16777216-byte cap"),
        # Cut short by the server (Content-Length not reached): a transport failure, retried.
        Case(
            "truncated-body",
            (Fault("truncated", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 1, f"{Q}:network_error": 3},
            r"peer closed connection without sending complete message body",
            settings=LATER,
            reason="network_error",
        ),
        Case(
            "connection-dropped-on-a-page",
            (Fault("close", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 1, f"{Q}:network_error": 3},
            r"[Dd]isconnected",
            settings=LATER,
            reason="network_error",
        ),
        Case(
            "page-hangs",
            (Fault("hang", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 2, f"{Q}:timeout": 1},
            r"deadline of [0-9.]+s exceeded",
            scrape_timeout=2.0,
            reason="deadline",
        ),
        Case(
            "page-hangs-past-timeout-seconds",
            (Fault("hang", pages=(0,)),),
            {f"{T}:success": 1, f"{Q}:timeout": 1},
            r"deadline of [0-9.]+s exceeded",
            settings={"timeout_seconds": 1},
            reason="deadline",
        ),
    ]


def _paging_cases() -> list[Case]:
    """Pages that do not add up to ``total``: read again from the first page, then fail."""
    both_passes = {f"{T}:success": 1, f"{Q}:success": 6}

    def incomplete(
        name: str, fault: Fault, cause: str, requests: dict[str, int] = both_passes
    ) -> Case:
        return Case(name, (fault,), requests, cause, reason="incomplete")

    return [
        incomplete(
            "total-grows-on-a-later-page",
            Fault("total_shift", pages=(1,), value=50),
            r"total changed while paging \(250 -> 300\), twice",
        ),
        incomplete(
            "total-shrinks-on-a-later-page",
            Fault("total_shift", pages=(2,), value=-100),
            r"total changed while paging \(250 -> 150\), twice",
        ),
        incomplete(
            "short-page-in-the-middle",
            Fault("short_page", pages=(1,)),
            r"counted 249 phone records, but total is 250, twice",
        ),
        incomplete(
            "list-shifted-one-phone-on-two-pages-one-on-none",
            Fault("shift", pages=(1,)),
            r"counted 249 phone records, but total is 250, twice",
        ),
        Case(
            "short-page-once-read-again", (Fault("short_page", pages=(1,), times=1),), both_passes
        ),
        incomplete(
            "total-grows-on-the-first-page",  # 450: the later pages say 250
            Fault("total_shift", pages=(0,), value=200),
            r"total changed while paging \(450 -> 250\), twice",
            {f"{T}:success": 1, f"{Q}:success": 10},
        ),
        incomplete(
            "total-shrinks-on-the-first-page",  # 150: two pages read, saying 250
            Fault("total_shift", pages=(0,), value=-100),
            r"total changed while paging \(150 -> 250\), twice",
            {f"{T}:success": 1, f"{Q}:success": 4},
        ),
        Case(
            "total-grows-on-the-first-page-once",
            (Fault("total_shift", pages=(0,), value=200, times=1),),
            {f"{T}:success": 1, f"{Q}:success": 5 + 3},
        ),
        Case(
            "same-phone-on-two-pages",
            (Fault("duplicate", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
        Case(
            "same-phone-twice-on-one-page",
            (Fault("duplicate", pages=(0,)),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
    ]


CASES = _ret_code_cases() + _http_cases() + _token_cases() + _body_cases() + _paging_cases()
