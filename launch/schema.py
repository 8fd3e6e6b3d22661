"""The one YAML reader and ``--set`` override parser of the launcher.

The dict -> dataclass converter (``build``) and the sections it builds live in the stdlib-only
``kd/sections.py`` (the stages use them too) and are re-exported here. Errors are
``ConfigError`` (a ``ValueError``) naming the dotted field, the bad value and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# The converter and the section declarations are stdlib-only and shared with the stages.
from kd.sections import ConfigError, FieldError, build, convert, to_dict

__all__ = ["ConfigError", "FieldError", "apply_override", "build", "convert", "load_yaml_text",
           "parse_override", "read_yaml", "to_dict"]


# ---------------------------------------------------------------- the one YAML reader
MAX_YAML_BYTES = 1 << 20  # 1 MiB: a config is a few KiB; anything larger is a mistake
MAX_YAML_NODES = 100_000  # values after alias expansion: bounds an alias bomb
MAX_MESSAGE = 400  # characters of a parser message shown (a hostile file cannot flood the terminal)


def _short(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ... (cut)"


def _loader_class():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (the last one would silently win)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # SafeLoader reports unhashable keys itself
                    if key in seen:
                        raise ConfigError(
                            f"duplicate key {_short(repr(key))} (line {seen[key] + 1} and line "
                            f"{key_node.start_mark.line + 1}): the second would silently replace "
                            f"the first; keep one (merge the two sections)")
                    seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    # YAML 1.1 reads 1:30:00 as the base-60 integer 5400: a SLURM time (or a mount) would
    # silently change meaning. Colon-separated digits stay strings.
    StrictLoader.yaml_implicit_resolvers = {
        k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    sexagesimal = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-9]+)+(?:\.[0-9_]*)?$")
    for first in "+-0123456789":
        StrictLoader.yaml_implicit_resolvers.setdefault(first, []).insert(
            0, ("tag:yaml.org,2002:str", sexagesimal))
    return StrictLoader


def _count_nodes(value: Any, where: str) -> None:
    """Refuse a document that expands (through aliases) to more than MAX_YAML_NODES values."""
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES} values after expanding YAML "
                              f"aliases (&anchor/*alias); a config is never this large. Write the "
                              f"values out instead of nesting aliases")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def _tags_as_text_loader():
    import yaml

    class TagsAsText(_loader_class()):
        """Also reads application tags (lm-eval's ``!function utils.x``) as plain text."""

    TagsAsText.add_multi_constructor(
        "!", lambda loader, suffix, node: loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode) else None)
    return TagsAsText


def load_yaml_text(text: str, where: str, tags_as_text: bool = False) -> Any:
    """Parse YAML with duplicate keys refused and alias expansion bounded; ConfigError on error."""
    import yaml

    loader = _tags_as_text_loader() if tags_as_text else _loader_class()
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {_short(e)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (recursive alias?)") from None
    _count_nodes(data, where)
    return data


def read_yaml(path: Path, tags_as_text: bool = False) -> Any:
    """The one reader of YAML files: size cap, UTF-8, then ``load_yaml_text``."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config file is at most {MAX_YAML_BYTES} "
                              f"bytes. Is this the right file?")
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"cannot read config {path}: it is a directory; give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    return load_yaml_text(text, str(path), tags_as_text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a","b","c"], value parsed as YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key; write dotted.key=value")
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"override {key}: value longer than {MAX_YAML_BYTES} bytes")
    try:
        value = load_yaml_text(raw, f"override {key}") if raw.strip() else ""
    except ConfigError as e:
        if "not valid YAML" not in str(e):
            raise
        value = raw
    return key.split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = nxt
    node[keys[-1]] = value
