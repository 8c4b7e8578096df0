"""Method registry: name -> PromptMethod subclass (like open_clip's model configs, timm's registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import unknown

if TYPE_CHECKING:
    from .base import PromptMethod

METHODS: dict[str, type[PromptMethod]] = {}


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    METHODS[cls.Options.model_fields["name"].default] = cls
    return cls


def get_method(name: str) -> type[PromptMethod]:
    from . import _all  # noqa: F401  (importing registers every method)

    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def method_names() -> list[str]:
    from . import _all  # noqa: F401

    return sorted(METHODS)
