"""Several processes opening one fresh SQLite MLflow store at once (a sweep, `maple-zoo ui`, a poller)."""

import subprocess
import sys
import time

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
