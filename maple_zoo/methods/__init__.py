"""Prompt-learning methods behind one small interface (`base.PromptMethod`) and a registry."""

from .base import MethodOptions, PromptMethod
from .registry import get_method, method_names

__all__ = ["MethodOptions", "PromptMethod", "get_method", "method_names"]
