"""Safe YAML for profiles: safe_load semantics, plus limits on size, depth, aliases and odd keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdcli.errors import ProfileError
from kdcli.profile.messages import printable

MAX_BYTES = 1 << 20    # a profile is a page of YAML; a bigger file is the wrong file


MAX_DEPTH = 32         # real profiles nest a handful of levels (distill.stages.0.losses.1.layers)


MAX_NODES = 100_000    # values after expanding aliases: stops "billion laughs" alias bombs


def read_text_file(path: Path) -> str:
    if not path.exists():
        raise ProfileError(f"profile not found: {path}", hint="pass the path of a .yaml profile; see profiles/")
    if not path.is_file():
        raise ProfileError(f"{path}: not a file", hint="pass the path of a .yaml profile; see profiles/")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ProfileError(f"{path}: {path.stat().st_size:,} bytes; a profile is at most {MAX_BYTES:,}",
                               hint="is this the right file? a profile is a short YAML mapping")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start})", hint="save the profile as UTF-8") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc.strerror})",
                           hint="check the file's permissions") from None


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader: a value Python cannot hold (a 5000-digit int, the date 2020-13-45)
    becomes a YAML error with its line, not a ValueError from deep inside PyYAML."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            shown = node.value if isinstance(node.value, str) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {shown[:40]!r}: {str(exc).split(';')[0]}",
                node.start_mark) from None


def parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """safe_load `text` (tags that build Python objects are refused), after checking its node graph.

    Returns the data and the root node (for line numbers). Raises yaml.YAMLError for syntax errors,
    ProfileError for a well-formed document kdcli will not build (see _check_nodes).
    """
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
            if root is None:
                return None, None
            _check_nodes(root, where)
            return loader.construct_document(root), root
        except RecursionError:  # PyYAML composes and builds recursively
            raise ProfileError(f"{where}: values nested too deeply (more than {MAX_DEPTH} levels)",
                               hint="a profile is a few levels of mappings and lists") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Refuse, before anything is built: alias bombs, anchors that contain themselves, absurd nesting,
    duplicate keys (YAML would keep the last one silently), and keys YAML reads as booleans or null."""
    size: dict[int, int] = {}  # id(node) -> nodes after alias expansion; also "finished"
    depth: dict[int, int] = {}
    started: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative depth-first walk: the structure under test may be deep
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_NODES:
                raise ProfileError(f"{where}:{line}: more than {MAX_NODES:,} values once aliases are expanded",
                                   hint="anchors (&) and aliases (*) that multiply are refused")
            if depth[key] > MAX_DEPTH:
                raise ProfileError(f"{where}:{line}: values nested more than {MAX_DEPTH} levels deep",
                                   hint="a profile is a few levels of mappings and lists")
            continue
        if key in size:
            continue
        if key in started:  # started, not finished: an ancestor of itself
            raise ProfileError(f"{where}:{node.start_mark.line + 1}: an alias (*) refers to the anchor (&) that "
                               "contains it, a structure without end", hint="remove the self-reference")
        started.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, where)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_MERGE = "tag:yaml.org,2002:merge"


_SURPRISES = {"tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:null": "null"}


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        line = key.start_mark.line + 1
        if key.tag in _SURPRISES:  # `on:`, `no:`, `~:` - YAML 1.1 reads these as true, false, None
            raise ProfileError(f"{where}:{line}: key {key.value!r} is read by YAML as {_SURPRISES[key.tag]}",
                               hint=f"quote it ('{key.value}':) if it is a name")
        first = seen.get((key.tag, key.value))
        if first is None:
            seen[(key.tag, key.value)] = line
        else:
            raise ProfileError(f"{where}:{line}: duplicate key {printable(key.value)} (first at line {first})",
                               hint="YAML would keep only the last one: remove one of them")

