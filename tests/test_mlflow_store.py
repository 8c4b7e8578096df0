"""Several processes opening one fresh SQLite MLflow store at once (a sweep, `maple-zoo ui`, a poller)."""

import subprocess
import sys
import time

import pytest
from filelock import FileLock

from maple_zoo import mlflow_store
from maple_zoo.errors import MapleZooError

OPEN = """
import sys, time
from maple_zoo.mlflow_store import open_client
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the store at the same instant
client = open_client(sys.argv[1])
client.search_experiments()
"""


def open_together(uri: str, processes: int) -> list[subprocess.CompletedProcess]:
    start = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(processes)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=240), p.communicate()[0]) for p in procs]


def test_processes_creating_one_sqlite_store_together_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    for done in open_together(uri, processes=3):
        assert done.returncode == 0, done.stdout[-2000:]


def test_a_store_locked_too_long_gives_a_one_line_error(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setattr(mlflow_store, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(db) + ".lock"), pytest.raises(MapleZooError, match=r"mlflow\.db\.lock held by another process"):
        mlflow_store.open_client(f"sqlite:///{db}")
    assert not db.exists()  # nothing created behind the holder's back
