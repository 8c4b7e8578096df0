"""Zoo names and references: `eurosat-16shot`, `eurosat-16shot@v3`.

Names become store keys and cache folder names, so they are validated before anything touches a
store or the disk: lowercase letters, digits, `-`, `_`, `.`; starting and ending with a letter or
digit; no `..`; at most 64 characters. Anything else is refused with a one-line error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import MapleZooError, did_you_mean

MAX_NAME_LEN = 64
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
_VERSION_RE = re.compile(r"v([1-9][0-9]{0,8})")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def show(text: str, limit: int = 40) -> str:
    """A user-supplied string made safe for a one-line message (escaped, truncated)."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise MapleZooError("invalid zoo name '': a name must not be empty")
    why = None
    if len(name) > MAX_NAME_LEN:
        why = f"longer than {MAX_NAME_LEN} characters"
    elif "/" in name or "\\" in name:
        why = "path separators are not allowed"
    elif ".." in name:
        why = "'..' is not allowed"
    elif name != name.lower():
        why = "use lowercase letters"
    elif not _NAME_RE.fullmatch(name):
        why = "use lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    if why:
        raise MapleZooError(f"invalid zoo name {show(name)}: {why}")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None) meaning newest; 'name@v3' -> (name, 3)."""
    if not isinstance(ref, str):
        raise MapleZooError("invalid zoo reference: expected NAME or NAME@vN")
    name, sep, version = ref.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    match = _VERSION_RE.fullmatch(version)
    if not match:
        raise MapleZooError(f"invalid version {show(version)} in {show(ref)}: expected NAME@vN, e.g. {name}@v1")
    return name, int(match.group(1))


def format_ref(name: str, version: int) -> str:
    return f"{name}@v{version}"


def default_name(dataset: str, shots: int, suffix: str | None = None) -> str:
    """`<dataset>-<shots>shot[-suffix]`, with the dataset lowercased and odd characters made '-'."""
    base = re.sub(r"[^a-z0-9._-]+", "-", str(dataset).lower()).strip("-._")
    name = f"{base}-{int(shots)}shot" + (f"-{suffix}" if suffix else "")
    return validate_name(name)


def validate_filename(filename: str) -> str:
    """File names inside an entry: plain names only, never paths (they are written into the cache)."""
    if not isinstance(filename, str) or not _FILE_RE.fullmatch(filename) or ".." in filename:
        raise MapleZooError(f"invalid file name {show(str(filename))} in zoo entry: plain file names only")
    return filename


def unknown_name(name: str, known: Iterable[str]) -> MapleZooError:
    known = sorted(known)
    if not known:
        return MapleZooError(f"unknown zoo entry '{name}': the zoo is empty")
    hint = did_you_mean(name, known) or f"; {len(known)} entries, see 'maple-zoo list'"
    return MapleZooError(f"unknown zoo entry '{name}'{hint}")
