"""The one place that reaches inside open_clip's towers: prompted text and image encoders."""

from .clip import PromptedCLIP

__all__ = ["PromptedCLIP"]
