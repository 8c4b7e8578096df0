"""The zoo index: every name, its versions, and for each version the card, files, sha256 and source.

The authoritative copy is `index.json` in the store, changed only by read-modify-conditional-write
(`update_index`), retried a bounded number of times on conflict, so concurrent promotions never
lose one. `zoo_index.yaml` at the repo root is the published catalogue in the same schema
(`export_catalogue` / `load_catalogue` / `import_catalogue`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import MapleZooError
from ..fsutil import atomic_write_text
from ..yamlio import read_yaml, validate
from .names import format_ref, unknown_name, validate_filename, validate_name
from .stores import PreconditionFailed, Store, check_key

SCHEMA_VERSION = 1
INDEX_KEY = "index.json"
UPDATE_ATTEMPTS = 10
T = TypeVar("T")


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str  # relative to the store root, so a catalogue survives moving the store
    uri: str  # where it lived when promoted, for people and tools reading the catalogue
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            return check_key(v)
        except MapleZooError as exc:
            raise ValueError(str(exc)) from None


class VersionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of card.json, which lists every file's sha256
    size: int = Field(ge=0)  # all files together
    created: str
    source_run: str | None = None  # MLflow run id
    card: dict[str, Any] = {}  # the card's fields, class names summarised as a count
    files: dict[str, FileRecord]

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, FileRecord]) -> dict[str, FileRecord]:
        for name in v:
            try:
                validate_filename(name)
            except MapleZooError as exc:
                raise ValueError(str(exc)) from None
        if "card.json" not in v:
            raise ValueError("a version must include card.json")
        return v


class EntryRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    versions: list[VersionRecord] = []

    @property
    def latest(self) -> VersionRecord:
        return max(self.versions, key=lambda r: r.version)


class ZooIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    updated: str | None = None
    entries: dict[str, EntryRecord] = {}

    @field_validator("entries")
    @classmethod
    def _names(cls, v: dict[str, EntryRecord]) -> dict[str, EntryRecord]:
        for name in v:
            try:
                validate_name(name)
            except MapleZooError as exc:
                raise ValueError(str(exc)) from None
        return v

    def resolve(self, name: str, version: int | None = None) -> VersionRecord:
        """The record for name@vN, or the newest version when `version` is None."""
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise unknown_name(name, self.entries)
        if version is None:
            return entry.latest
        for rec in entry.versions:
            if rec.version == version:
                return rec
        have = ", ".join(f"v{r.version}" for r in sorted(entry.versions, key=lambda r: r.version))
        raise MapleZooError(f"zoo entry '{name}' has no version v{version} (have: {have})")

    def to_data(self) -> dict:
        data = self.model_dump(mode="json")
        data["entries"] = {
            name: {"versions": sorted(e["versions"], key=lambda r: r["version"])}
            for name, e in sorted(data["entries"].items())
        }
        return data


def parse_index(raw: bytes, source: str) -> ZooIndex:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MapleZooError(f"{source}: the zoo index is not valid JSON (corrupt?)") from None
    try:
        return ZooIndex.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise MapleZooError(f"{source}: invalid zoo index at {loc}: {first['msg']}") from None


def read_index(store: Store) -> tuple[ZooIndex, str | None]:
    """(index, etag); an empty index and None when the store has none yet."""
    from .stores import NotFound

    try:
        raw, etag = store.get(INDEX_KEY)
    except NotFound:
        return ZooIndex(), None
    return parse_index(raw, store.uri(INDEX_KEY)), etag


def update_index(store: Store, mutate: Callable[[ZooIndex], T], attempts: int = UPDATE_ATTEMPTS) -> T:
    """Read, mutate, write back conditionally; on a conflict start over from a fresh read.

    `mutate` must be safe to call again (it sees the newest index each time)."""
    for attempt in range(attempts):
        index, etag = read_index(store)
        result = mutate(index)
        index.updated = utc_now()
        data = (json.dumps(index.to_data(), indent=1, sort_keys=False) + "\n").encode()
        try:
            if etag is None:
                store.put_if_absent(INDEX_KEY, data)
            else:
                store.put_if_match(INDEX_KEY, data, etag)
            return result
        except PreconditionFailed:
            # Someone else updated the index in between: back off with jitter and redo on top of theirs.
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise MapleZooError(
        f"{store.uri(INDEX_KEY)}: the index kept changing under us; gave up after {attempts} attempts"
    )


def add_version(store: Store, name: str, make: Callable[[int], VersionRecord]) -> tuple[VersionRecord, bool]:
    """Append the next version of `name`; `make(version)` builds its record. Returns (record, added).

    Idempotent: when the newest version already has exactly this content (same card sha256, e.g.
    a resumed sweep promoting its best trial again) that version is returned and nothing changes."""
    validate_name(name)

    def mutate(index: ZooIndex) -> VersionRecord:
        entry = index.entries.setdefault(name, EntryRecord())
        if entry.versions and entry.latest.sha256 == make(entry.latest.version).sha256:
            raise _Unchanged(entry.latest)
        version = max((r.version for r in entry.versions), default=0) + 1
        record = make(version)
        entry.versions.append(record)
        return record, True

    try:
        return update_index(store, mutate)
    except _Unchanged as same:
        return same.record, False


class _Unchanged(Exception):
    """Raised inside a mutation to skip the write (nothing to change)."""

    def __init__(self, record: VersionRecord):
        self.record = record


def export_catalogue(index: ZooIndex, path: str | Path) -> Path:
    header = "# maple-zoo published catalogue (generated by `maple-zoo publish-index`; same schema as the store index)\n"
    text = yaml.safe_dump(index.to_data(), sort_keys=False, allow_unicode=True, width=110)
    return atomic_write_text(path, header + text)


def load_catalogue(path: str | Path) -> ZooIndex:
    data, lines = read_yaml(path)
    return validate(ZooIndex, data if data is not None else {}, str(path), lines)


def import_catalogue(store: Store, path: str | Path) -> list[str]:
    """Merge a catalogue into the store's index (e.g. after copying the blobs to a new bucket).

    Only versions whose files all exist in the store are added; a name@vN that already exists
    with different content is an error. Returns the refs added."""
    catalogue = load_catalogue(path)
    for name, entry in catalogue.entries.items():
        for rec in entry.versions:
            missing = [f.key for f in rec.files.values() if not store.exists(f.key)]
            if missing:
                raise MapleZooError(f"{path}: {format_ref(name, rec.version)}: {missing[0]} is not in {store.url}")

    def mutate(index: ZooIndex) -> list[str]:
        added = []
        for name, entry in catalogue.entries.items():
            have = index.entries.setdefault(name, EntryRecord())
            by_version = {r.version: r for r in have.versions}
            for rec in entry.versions:
                old = by_version.get(rec.version)
                if old is None:
                    have.versions.append(rec.model_copy(deep=True))
                    added.append(format_ref(name, rec.version))
                elif old.sha256 != rec.sha256:
                    raise MapleZooError(f"{path}: {format_ref(name, rec.version)} differs from the store's")
        return added

    return update_index(store, mutate)
