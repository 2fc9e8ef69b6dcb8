"""YAML loading shared by both config files: safe types only, and a key given twice is an error.

PyYAML keeps the last of two equal keys without a word, so a typo'd copy of a block
silently wins; exporter-toolkit (``yaml.UnmarshalStrict``) refuses such a file, and
so do we, naming the key path and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def load(text: str) -> Any:
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
