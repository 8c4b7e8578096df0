"""Object stores behind one small interface: get, put-if-absent, put-if-match, list, exists.

Keys are relative POSIX paths ("index.json", "blobs/sha256/ab/ab12..."). Every write returns an
etag and conditional writes raise PreconditionFailed when another writer got there first, which is
all the zoo needs for lost-update-free index changes. `open_store(url)` picks the implementation:
a local folder, or `s3://bucket/prefix` (the only place boto3 is imported is `zoo/s3.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import filelock

from ..errors import MapleZooError

CHUNK = 1 << 20
LOCK_TIMEOUT_S = 30.0

Progress = Callable[[int], None]  # called with the number of bytes just transferred
# (file name, total bytes) -> the Progress callback for that file; lets the CLI draw bars.
ProgressFactory = Callable[[str, int], Progress]


class NotFound(MapleZooError):
    """The key does not exist in the store."""


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (put_if_absent) or changed (put_if_match)."""


def check_key(key: str) -> str:
    """Keys come from code and from the index; refuse anything that could escape the store root."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise MapleZooError(f"invalid store key {str(key)[:80]!r}")
    return key


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Store(ABC):
    url: str

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """(content, etag); raises NotFound."""

    @abstractmethod
    def download(self, key: str, out: BinaryIO, progress: Progress | None = None) -> None:
        """Stream the object into `out` (the caller hashes and verifies); raises NotFound."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Unconditional write; returns the new etag."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> str:
        """Write only if the key does not exist; raises PreconditionFailed otherwise."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Write only if the current etag is `etag`; raises PreconditionFailed otherwise."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{check_key(key)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStore(Store):
    """A folder. Writes are atomic renames; conditional writes hold a per-key file lock and compare
    the content sha256 (the etag), so two processes never lose an update."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @staticmethod
    def _etag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock",
                                 timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise MapleZooError(
                f"{self.url}: could not lock '{key}' within {LOCK_TIMEOUT_S:.0f} s (another writer stuck?)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _write(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._etag(data)

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.uri(key)}: not found") from None

    def get(self, key: str) -> tuple[bytes, str]:
        with self._open(key) as f:
            data = f.read()
        return data, self._etag(data)

    def download(self, key: str, out: BinaryIO, progress: Progress | None = None) -> None:
        with self._open(key) as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))

    def put(self, key: str, data: bytes) -> str:
        with self._locked(key):
            return self._write(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        with self._locked(key):
            if self._path(key).exists():
                raise PreconditionFailed(key)
            return self._write(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        with self._locked(key):
            try:
                current = self._etag(self._path(key).read_bytes())
            except FileNotFoundError:
                raise PreconditionFailed(key) from None
            if current != etag:
                raise PreconditionFailed(key)
            return self._write(key, data)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .locks
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in filenames:
                if f.startswith("."):  # temp files of in-flight writes
                    continue
                key = f if rel == "." else f"{rel}/{f}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def open_store(url: str | Path, s3_options=None) -> Store:
    """A store for `url`: `s3://bucket/prefix` or a local folder (path or file:// URI)."""
    url = str(url)
    if url.startswith("s3://"):
        from .s3 import S3Store  # boto3 only loads when an S3 zoo is configured

        return S3Store.from_url(url, s3_options)
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://", 1)[0]
        raise MapleZooError(f"zoo store '{scheme}://...': unsupported scheme (use a folder or s3://bucket/prefix)")
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        url = unquote(urlparse(url).path)
    return LocalStore(url)
