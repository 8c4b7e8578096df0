"""Import every method module so each registers itself."""

from . import maple, zeroshot  # noqa: F401
