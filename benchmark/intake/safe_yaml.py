"""Safe YAML for manifests: no tags or objects, no anchors, aliases, merge keys or repeated keys, at
most MAX_MANIFEST_BYTES and MAX_DEPTH deep; every refusal names the key or the line."""

from __future__ import annotations

from typing import Any

import yaml

from benchmark.errors import ThreatbenchError
from benchmark.untrusted import field_name

MAX_MANIFEST_BYTES = 64 * 1024
MAX_DEPTH = 6              # top level > model > preprocessing > mean is 4


class ManifestError(ThreatbenchError, ValueError):
    """An invalid manifest; the message names the file and the dotted key, and says how to fix it."""


def join_key(where: str, key: str) -> str:
    """The dotted key `where.key` (or `key` at the top level)."""
    return f"{where}.{key}" if where else key


class _Refused(yaml.YAMLError):
    """A YAML feature a manifest may not use; `where`: the dotted key, or the line."""

    def __init__(self, where: str, problem: str):
        super().__init__(problem)
        self.where = where
        self.problem = problem


def _line(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}"


class _ManifestLoader(yaml.SafeLoader):
    """safe_load without what a manifest never needs and an attacker can use: anchors and aliases
    (an 876-byte alias bomb expands to gigabytes) and deep nesting (recursion), both refused while
    the document is composed, before anything is expanded."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(_line(event.start_mark), "YAML anchors and aliases (&name, *name) are not "
                           "allowed in a manifest; write each value out")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(_line(event.start_mark), f"nested deeper than {MAX_DEPTH} levels; a "
                               "manifest is a few flat mappings (see submissions/README.md)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _refuse_repeated_keys(node: yaml.Node, where: str) -> None:
    """Duplicate keys (the second `sha256:` would silently win) and merge keys (`<<`), by dotted key."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(item, f"{where}[{index}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, yaml.Mark] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else _line(key_node.start_mark)
        here = join_key(where, field_name(key))
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused(here, "merge keys (<<) are not allowed in a manifest; write the keys out")
        if key in first:
            raise _Refused(here, f"duplicate key ({_line(first[key])} and {_line(key_node.start_mark)}); "
                           "give each key once")
        first[key] = key_node.start_mark
        _refuse_repeated_keys(value_node, here)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where and what, with the parser's wording cut short (it can quote the input)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{_line(mark)}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(part for part in (error.context, error.problem) if part)
        return where + " ".join(what.split())[:200]
    return " ".join(str(error).split())[:200]


def read_yaml(raw: bytes, name: str) -> Any:
    """The document in `raw`, or ManifestError naming `name` and the key or line."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{name}: {len(raw):,} bytes; a manifest is at most {MAX_MANIFEST_BYTES:,} bytes")
    try:
        loader = _ManifestLoader(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ManifestError(f"{name}: not valid YAML: not UTF-8 (byte {error.start})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_repeated_keys(node, "")
        return loader.construct_document(node)
    except _Refused as error:
        raise ManifestError(f"{name}: {error.where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{name}: not valid YAML: {_yaml_problem(error)}") from None
    except (ValueError, RecursionError) as error:   # e.g. an integer of more digits than int() reads
        raise ManifestError(f"{name}: not valid YAML: {' '.join(str(error).split())[:120]}") from None
    finally:
        loader.dispose()
