"""Reads the pipeline config (``MAILPULSE_CONFIG``): a YAML file checked against the schema in
:mod:`streams.domain.config`, with one-line errors that name the file, key and reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streams.domain.config import PipelineConfig


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file, key and reason, on one line: a
    character that is not printable (a line break in a key: ``"so\nme":``) is written as its escape."""

    def __init__(self, message: str) -> None:
        super().__init__("".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                                 for ch in message))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last, so a second
    ``triggers:`` section or a second segment of one name silently replaced the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():  # (!!set [1]: the base says)
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<``: merged in by the base loader, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):  # (a list or mapping as a key: unhashable, a
                continue  # TypeError here; the base loader says "found unhashable key")
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {str(key)[:64]!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value given a tag it cannot be read as (``!!int abc``, ``!!float x``, ``!!bool maybe``,
        ``!!timestamp x``) is a YAML error at its line: the constructor raised ValueError, KeyError or
        AttributeError, a traceback."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:64]!r} cannot be read as {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None


# Booleans and numbers as YAML 1.2 reads them.  Only ``true`` and ``false`` are booleans: YAML 1.1 also reads
# ``yes``, ``no``, ``on`` and ``off`` as booleans, so a rule's ``in: [DE, NO, SE]`` held false for Norway and
# never matched its people.  ``1e6`` and ``2.5e3`` are numbers (YAML 1.1: text, so ``gte: 1e6`` compared a
# number with text and never held); ``10:30`` and ``01234`` are text (YAML 1.1: the base-60 number 630 and
# the octal 668, so ``eq: 10:30`` or a post code ``eq: 02134`` never matched the text a trait holds).
_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


#: The most values aliases (``*name``) may add to the file as written.  Anchors that each repeat the one
#: before nine times (the "billion laughs") are a few lines that expand to hundreds of millions of values,
#: whose rules were checked for hours, in gigabytes.
MOST_ALIASED = 100_000


class _Aliases(Exception):
    """What is wrong with the aliases of a config (a message, and the node where it shows)."""

    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.node = node


def _check_aliases(root: yaml.Node) -> None:
    """:class:`_Aliases` if an alias refers to a value that holds it (a rule that is its own child: a
    RecursionError) or the aliases expand the file by more than :data:`MOST_ALIASED` values."""
    sizes: dict[int, int] = {}  # id of a node -> the values it stands for, expanded
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _Aliases("an alias refers to a value that holds it", node)
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if size(root) - len(sizes) > MOST_ALIASED:
        raise _Aliases(f"its aliases expand it by more than {MOST_ALIASED} values", root)


#: The largest config file read.  Its rules are checked as it loads: 13 MB of ``blocked_values`` took over a
#: minute, and a path such as ``/dev/zero`` was read without end.
MOST_CONFIG_BYTES = 1024 * 1024


def _read(path: Path) -> str:
    """The file's text, at most :data:`MOST_CONFIG_BYTES` (:class:`ConfigError` past that)."""
    with path.open("rb") as file:
        data = file.read(MOST_CONFIG_BYTES + 1)
    if len(data) > MOST_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MOST_CONFIG_BYTES // 1024} KiB, the most a config may be")
    return data.decode("utf-8")


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value of ``key`` in a mapping node (None: not a mapping, or no such key)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key and isinstance(value, yaml.Node):
                return value
    return None


def _blocked_values_as_written(root: yaml.Node) -> None:
    """A bare number among ``identity.blocked_values`` is read as the text written: they are identifier
    texts, and ``1e5`` or ``1.50`` read as a number became ``100000.0`` or ``1.5``, which blocked an id
    nobody wrote and let the one written through."""
    identity = _child(root, "identity")
    values = None if identity is None else _child(identity, "blocked_values")
    if isinstance(values, yaml.SequenceNode):
        values.value = [yaml.ScalarNode("tag:yaml.org,2002:str", item.value, item.start_mark, item.end_mark)
                        if isinstance(item, yaml.ScalarNode) and item.tag in _NUMBER_TAGS else item
                        for item in values.value]


def _parse(text: str) -> Any:
    """``text`` as YAML (:class:`_UniqueKeyLoader`), its aliases checked before they are expanded."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        _blocked_values_as_written(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: Path | None) -> PipelineConfig:
    """The built-in defaults, overridden by the YAML file at ``path`` (if any)."""
    if path is None:
        return PipelineConfig()
    try:
        text = _read(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data: Any = _parse(text)
    except _Aliases as exc:
        mark = exc.node.start_mark
        raise ConfigError(f"{path}: line {mark.line + 1} not usable YAML: {exc}") from None
    except yaml.reader.ReaderError as exc:  # (its message is two lines, the second "in <unicode string>")
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{path}: line {line} not valid YAML: {exc.reason} (#x{exc.character:04x})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # (one line, whatever the error)
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        return PipelineConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (guardrails, triggers, segments, scoring, "
                          "identity, time, limits)")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in err["loc"])
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{path}: {key}: {reason}" if key else f"{path}: {reason}") from None
