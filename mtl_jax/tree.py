"""Pytree paths and leaf selection shared by penalties and per-task gradients."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

Selector = str | Callable[[str, jax.Array], bool] | None


def path_str(path: tuple[Any, ...]) -> str:
    """A key path as ``"params/trunk/Dense_0/kernel"``.

    Examples:
      >>> leaves = jax.tree_util.tree_flatten_with_path({"params": {"w": 1}})[0]
      >>> path_str(leaves[0][0])
      'params/w'
    """
    return "/".join(_key_name(key) for key in path)


def _key_name(key: Any) -> str:
    if isinstance(key, DictKey | FlattenedIndexKey):
        return str(key.key)
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, SequenceKey):
        return str(key.idx)
    return str(key)


def matches(select: str | Callable[[str, jax.Array], bool], path: str, leaf: Any) -> bool:
    """Whether a leaf is selected: ``select`` is a regex searched in the path, or a predicate."""
    return bool(re.search(select, path)) if isinstance(select, str) else bool(select(path, leaf))
