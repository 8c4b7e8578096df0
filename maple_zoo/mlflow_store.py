"""Opening an MLflow client on a store that another process may be creating at the same moment.

MLflow builds (and migrates) a SQLite store's schema the first time a process opens it, with no
locking of its own: two processes opening a fresh file together (a sweep and `maple-zoo ui`, two
sweeps in one folder, a script polling the store) can both run the migration and one fails with
"table _alembic_tmp_... already exists". So the first open of a SQLite store happens under a file
lock next to the database; server stores (http, postgresql, ...) migrate themselves once and need none.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from .errors import MapleZooError

SQLITE = "sqlite:///"
LOCK_TIMEOUT_S = 300  # a migration takes seconds; this only bounds a wait behind a stuck process


def sqlite_path(uri: str | None) -> Path | None:
    return Path(uri[len(SQLITE):]) if uri and uri.startswith(SQLITE) else None


def open_client(uri: str | None):
    """An MlflowClient whose store (tracking and model registry) is fully created before it is returned."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise MapleZooError(f"MLflow store {path}: {lock.lock_file} held by another process for over "
                            f"{LOCK_TIMEOUT_S} s (a stuck sweep or ui?)") from None
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # creates or migrates the tracking schema now, under the lock
        client.search_registered_models(max_results=1)  # and the registry's
    finally:
        lock.release()
    return client
