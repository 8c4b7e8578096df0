"""Import every method module so each registers itself."""

from . import aple, cocoop, comma, coop, ivlp, language, maple, vpt, zeroshot  # noqa: F401
