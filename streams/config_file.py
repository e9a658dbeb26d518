"""Reads the pipeline config (``MAILPULSE_CONFIG``): a YAML file checked against the schema in
:mod:`streams.domain.config`, with one-line errors that name the file, key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streams.domain.config import PipelineConfig


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file, key and reason."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last, so a second
    ``triggers:`` section or a second segment of one name silently replaced the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<``: merged in by the base loader, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {str(key)[:64]!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | None) -> PipelineConfig:
    """The built-in defaults, overridden by the YAML file at ``path`` (if any)."""
    if path is None:
        return PipelineConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data: Any = yaml.load(text, Loader=_UniqueKeyLoader)  # (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
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
        raise ConfigError(f"{path}: {key}: {reason}") from None
