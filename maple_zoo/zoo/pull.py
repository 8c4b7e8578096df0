"""Pull NAME[@vN] into the local cache: resolve through the index, download, verify, rename.

Cache layout: `<cache>/<store tag>/<name>/v<N>/` holding the entry's files plus `.zoo-entry.json`
(its index record). Each pull downloads into a fresh `.v<N>.partial-*` folder next to it, checks
every file's sha256 and size, and only then renames the folder into place in one atomic step.
So a corrupt or truncated object caches nothing, a killed pull leaves only a partial folder that
no reader ever looks at (swept later), and of two concurrent pulls the first rename wins and the
second uses it. Cached entries are re-hashed on every use (they are a few MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MapleZooError, did_you_mean
from ..fsutil import atomic_write_bytes, atomic_write_text
from .config import ZooConfig, load_config
from .index import VersionRecord, read_index
from .names import format_ref, parse_ref
from .stores import ProgressFactory, Store, sha256_file

log = logging.getLogger(__name__)

ENTRY_META = ".zoo-entry.json"
STALE_PARTIAL_S = 3600


@dataclass
class PulledEntry:
    """A verified entry on local disk: what eval/predict load prompts and card from."""

    name: str
    version: int
    path: Path  # folder with card.json, prompts.safetensors, ...
    record: VersionRecord
    from_cache: bool = False
    _card: dict | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return format_ref(self.name, self.version)

    @property
    def card(self) -> dict:
        if self._card is None:
            self._card = json.loads((self.path / "card.json").read_text(encoding="utf-8"))
        return self._card

    @property
    def prompts_path(self) -> Path:
        return self.path / "prompts.safetensors"


def verify_folder(folder: Path, record: VersionRecord) -> str | None:
    """None when every file in the folder matches the record, else what is wrong."""
    for fname, frec in record.files.items():
        path = folder / fname
        if not path.is_file():
            return f"{fname} is missing"
        if sha256_file(path) != (frec.sha256, frec.size):
            return f"{fname} does not match its sha256"
    return None


def _read_meta(folder: Path) -> VersionRecord | None:
    try:
        return VersionRecord.model_validate_json((folder / ENTRY_META).read_bytes())
    except (OSError, ValueError):
        return None


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> None:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)


def _download_into(store: Store, record: VersionRecord, tmp: Path, progress: ProgressFactory | None) -> None:
    for fname, frec in record.files.items():
        advance = progress(fname, frec.size) if progress else None
        with open(tmp / fname, "wb") as f:
            w = _HashingWriter(f)
            try:
                store.download(frec.key, w, advance)
            except OSError as exc:  # dropped connection, full disk: name it, cache nothing
                raise MapleZooError(
                    f"{store.uri(frec.key)}: download of {fname} interrupted ({exc}); nothing was cached"
                ) from None
            f.flush()
            os.fsync(f.fileno())
        if (w.h.hexdigest(), w.n) != (frec.sha256, frec.size):
            what = "truncated" if w.n < frec.size else "corrupt"
            raise MapleZooError(
                f"{store.uri(frec.key)}: {fname} failed verification ({what}: got {w.n} bytes, sha256 "
                f"{w.h.hexdigest()[:12]}..., expected {frec.size} bytes, {frec.sha256[:12]}...); nothing was cached"
            )


def _sweep_partials(name_dir: Path) -> None:
    """Remove partial folders left by killed pulls (old enough that no live pull owns them)."""
    now = time.time()
    for p in list(name_dir.glob(".v*.partial-*"))[:100]:
        try:
            if now - p.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _discard(folder: Path) -> None:
    """Move a bad cache folder out of the way atomically, then delete it."""
    trash = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".trash-"))
    try:
        os.rename(folder, trash / "x")
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


def _fetch(store: Store, name: str, record: VersionRecord, final: Path, progress: ProgressFactory | None) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_partials(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        _download_into(store, record, tmp, progress)
        atomic_write_text(tmp / ENTRY_META, record.model_dump_json(indent=1))
        try:
            os.rename(tmp, final)
        except OSError as exc:
            # Another pull renamed its copy first; use it if it is whole.
            if not (final.is_dir() and verify_folder(final, record) is None):
                raise MapleZooError(f"cannot place {format_ref(name, record.version)} into the cache at {final}: "
                                    f"{exc.strerror or exc}") from None
            log.info("%s: another pull finished first; using its copy", format_ref(name, record.version))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _cached(config: ZooConfig, name: str, version: int | None) -> tuple[Path, VersionRecord] | None:
    name_dir = config.store_cache() / name
    if version is not None:
        candidates = [name_dir / f"v{version}"]
    else:
        found = [p for p in name_dir.glob("v*") if p.name[1:].isdigit()] if name_dir.is_dir() else []
        candidates = sorted(found, key=lambda p: int(p.name[1:]), reverse=True)
    for folder in candidates:
        record = _read_meta(folder)
        if record is not None:
            return folder, record
    return None


def _offline(config: ZooConfig, name: str, version: int | None) -> tuple[Path, VersionRecord]:
    hit = _cached(config, name, version)
    if hit is None:
        root = config.store_cache()
        names = [p.name for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
        ref = format_ref(name, version) if version else name
        raise MapleZooError(
            f"'{ref}' is not in the cache (offline){did_you_mean(name, names)}; pull it once without --offline"
        )
    folder, record = hit
    problem = verify_folder(folder, record)
    if problem:
        raise MapleZooError(f"cached {format_ref(name, record.version)} at {folder} is damaged ({problem}); "
                            "pull it again without --offline")
    return folder, record


def _copy_to(folder: Path, dest: Path) -> Path:
    dest = Path(dest)
    for p in sorted(folder.iterdir()):
        if p.is_file():
            atomic_write_bytes(dest / p.name, p.read_bytes())
    return dest


def pull(
    ref: str,
    *,
    config: ZooConfig | None = None,
    store: Store | None = None,
    offline: bool = False,
    to: str | Path | None = None,
    progress: ProgressFactory | None = None,
) -> PulledEntry:
    """Make NAME[@vN] available locally, verified; returns where it is and its record.

    Online, the index is read to find the version (bare NAME = newest) and the cache is used when it
    already holds that exact content. Offline, only the cache is used. `to` copies the files there."""
    name, version = parse_ref(ref)
    config = config or load_config()
    from_cache = True
    if offline:
        folder, record = _offline(config, name, version)
    else:
        store = store or config.open_store()
        index, _ = read_index(store)
        record = index.resolve(name, version)
        folder = config.store_cache() / name / f"v{record.version}"
        cached = _read_meta(folder) if folder.is_dir() else None
        if cached is None or cached.sha256 != record.sha256 or verify_folder(folder, record):
            if folder.exists():
                log.warning("cached %s is stale or damaged; downloading again", format_ref(name, record.version))
                _discard(folder)
            folder = _fetch(store, name, record, folder, progress)
            from_cache = False
    if to is not None:
        folder = _copy_to(folder, Path(to))
    return PulledEntry(name=name, version=record.version, path=folder, record=record, from_cache=from_cache)
