"""The unauthenticated ``/_sim/...`` endpoints tests use to steer a running simulator."""

import json
from collections.abc import Callable

from exporter.simulator.edits import Change
from exporter.simulator.faults import parse_faults
from exporter.simulator.reply import Reply, json_reply
from exporter.simulator.state import SimState

PREFIX = "/_sim/"


def state_document(state: SimState) -> dict[str, object]:
    """Everything about the simulator as one JSON-able document."""
    return {
        "config": state.config.to_dict(),
        "stats": state.stats.snapshot(),
        "expected": state.expected().to_dict(),
        "faults": [f.to_dict() for f in state.faults.active()],
    }


def _bad(message: str) -> Reply:
    return json_reply({"error": message}, 400)


def _faults_reply(state: SimState) -> Reply:
    return json_reply({"faults": [f.to_dict() for f in state.faults.active()]})


def control(state: SimState, method: str, path: str, body: bytes) -> Reply:
    """Route one control request; 404/405 for what does not exist, 400 for bad input."""
    try:
        data: object = json.loads(body) if body.strip() else None
    except ValueError:
        return _bad("body is not valid JSON")
    try:
        return _route(state, method, path.removeprefix(PREFIX), data)
    except ValueError as exc:
        return _bad(str(exc))


def _get_state(state: SimState, data: object) -> Reply:
    return json_reply(state_document(state))


def _get_faults(state: SimState, data: object) -> Reply:
    return _faults_reply(state)


def _put_faults(state: SimState, data: object) -> Reply:
    if not isinstance(data, list):
        raise ValueError("PUT /_sim/faults takes a list of fault objects")
    state.faults.set(parse_faults(data))
    return _faults_reply(state)


def _post_fault(state: SimState, data: object) -> Reply:
    if not isinstance(data, dict):
        raise ValueError("POST /_sim/faults takes one fault object")
    state.faults.add(parse_faults(data)[0])
    return _faults_reply(state)


def _delete_faults(state: SimState, data: object) -> Reply:
    state.faults.clear()
    return _faults_reply(state)


def _get_config(state: SimState, data: object) -> Reply:
    return json_reply({"config": state.config.to_dict()})


def _patch_config(state: SimState, data: object) -> Reply:
    if not isinstance(data, dict):
        raise ValueError("PATCH /_sim/config takes an object of config fields")
    return json_reply({"config": state.update(data).to_dict()})


def _post_phones(state: SimState, data: object) -> Reply:
    touched = state.steer(Change.parse(data))
    return json_reply({"phones": touched, "total": state.config.phones})


def _delete_phones(state: SimState, data: object) -> Reply:
    state.reset_edits()
    return json_reply({"phones": [], "total": state.config.phones})


def _expire_tokens(state: SimState, data: object) -> Reply:
    state.tokens.expire_all()
    return json_reply({"ok": True})


def _reset_stats(state: SimState, data: object) -> Reply:
    state.stats.reset()
    return json_reply({"ok": True})


_ROUTES: dict[str, dict[str, Callable[[SimState, object], Reply]]] = {
    "state": {"GET": _get_state},
    "faults": {
        "GET": _get_faults,
        "PUT": _put_faults,
        "POST": _post_fault,
        "DELETE": _delete_faults,
    },
    "config": {"GET": _get_config, "PATCH": _patch_config},
    "phones": {"POST": _post_phones, "DELETE": _delete_phones},
    "expire-tokens": {"POST": _expire_tokens},
    "reset-stats": {"POST": _reset_stats},
}


def _route(state: SimState, method: str, name: str, data: object) -> Reply:
    methods = _ROUTES.get(name)
    if methods is None:
        return json_reply({"error": f"no such control endpoint: {PREFIX}{name}"}, 404)
    handler = methods.get(method)
    if handler is None:
        return json_reply({"error": f"{method} is not allowed on {PREFIX}{name}"}, 405)
    return handler(state, data)
