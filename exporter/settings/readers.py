"""What both settings files share: the error, YAML loading, mappings, Go-typed scalars.

Every error is a ``ConfigError`` that names the key path (or the file). YAML is read
with safe types only, and a key given twice is an error: PyYAML keeps the last of two
equal keys without a word, so a typo'd copy of a block would silently win, while
exporter-toolkit (``yaml.UnmarshalStrict``) refuses such a file. The ``go_*`` readers
fill values the way yaml.v2 fills Go types, for the exporter-toolkit web config; the
exporter's own config file reads its scalars more leniently (``settings.targets``).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS |= {"m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A settings problem, with the key path (or file) it concerns."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def why_unreadable(err: OSError) -> str:
    """Why a file could not be read, as an error says it; a refused read names the uid and
    gid the exporter runs as (a container's uid is often not the file owner's)."""
    reason = err.strerror or type(err).__name__
    if err.errno in (errno.EACCES, errno.EPERM):
        reason += f" (the exporter runs as uid {os.getuid()}, gid {os.getgid()})"
    return reason


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice."""


def _check_duplicates(root: Node) -> None:
    """Raise ``DuplicateKeyError`` for the first mapping that repeats a key.

    Each node is visited once, so aliases (even an alias bomb) cost nothing extra.
    Merge keys (``<<``) are not duplicates: explicit keys override merged ones.
    """
    seen_nodes: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                    stack.append((value, path))
                    continue
                child = f"{path}.{key.value}" if path else str(key.value)
                identity = (key.tag, key.value)
                if identity in first_line:
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"duplicate key {child} (first given on line {first_line[identity]})",
                        key.start_mark,
                    )
                first_line[identity] = key.start_mark.line + 1
                stack.append((value, child))


def _load(text: str) -> Any:
    """Parse one YAML document with safe types; raises ``yaml.YAMLError``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml_file(path: str, what: str) -> Any:
    """The YAML document in the file at ``path`` (``what`` names the file in errors).

    Raises ``ConfigError``: unreadable, not UTF-8, not YAML (with line and column), a
    key given twice, or nested too deeply.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(path, f"cannot read {what}: {why_unreadable(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, f"{what} is not UTF-8 text") from None
    try:
        return _load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(path, f"{where}{problem}") from None
    except RecursionError:
        raise ConfigError(path, "nested too deeply or refers to itself") from None


def join(path: str, key: str) -> str:
    """The key path of ``key`` under ``path`` (``targets[0]`` + ``name``)."""
    return f"{path}.{key}" if path else key


def mapping(
    path: str, raw: object, known: tuple[str, ...] | None = None, *, string_keys: bool = False
) -> dict[Any, Any]:
    """``raw`` as a mapping (null is empty); with ``known``, any other key is an error.

    ``string_keys``: a key that is not a string is an error (Go's maps convert them).
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path or "(top level)", f"must be a mapping, got {type(raw).__name__}")
    if string_keys:
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(path or "(top level)", f"keys must be strings, got {key!r}")
    if known is not None:
        for key in raw:
            if key not in known:
                raise ConfigError(join(path, str(key)), "unknown key")
    return raw


# --- scalars the way yaml.v2 fills Go types --------------------------------------------------


def go_string(path: str, raw: object) -> str:
    """A Go ``string`` field: any scalar as written, null as empty."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    raise ConfigError(path, f"must be a string, got {type(raw).__name__}")


def go_strings(path: str, raw: object) -> tuple[str, ...] | None:
    """A Go ``[]string``; None when absent (an empty list is not absent)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError(path, f"must be a list, got {type(raw).__name__}")
    return tuple(go_string(f"{path}[{i}]", item) for i, item in enumerate(raw))


def go_bool(path: str, raw: object) -> bool:
    """A Go ``bool``: true or false (YAML 1.1 spellings too); null is false."""
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise ConfigError(path, f"must be true or false, got {raw!r}")
    return raw


def go_int(path: str, raw: object) -> int:
    """A Go ``int``: a whole number; null is 0."""
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(path, f"must be a whole number, got {raw!r}")
    return raw


def parse_duration(path: str, raw: object) -> float:
    """A Go ``time.Duration`` in seconds: ``"1m30s"``, ``"250ms"``, ``0``; a bare integer is ns."""
    if raw is None:
        return 0.0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw * 1e-9
    text = raw if isinstance(raw, str) else ""
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
    if body == "0":
        return 0.0
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ConfigError(path, f'must be a duration such as "1s" or "250ms", got {raw!r}')
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
