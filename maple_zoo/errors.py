"""The one exception type for problems a user can fix (bad input, missing files, unknown names).

The CLI prints it as a single line and exits with code 2; everything else is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class MapleZooError(Exception):
    """A user-facing error: the message names the culprit and fits on one line."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> MapleZooError:
    choices = sorted(choices)
    return MapleZooError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; known: {', '.join(choices)}")
