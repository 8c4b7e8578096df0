"""Zoo behaviour on both stores (local folder and S3 over HTTP): round trip, versions, concurrency,
integrity, killed downloads, offline use."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import test_zoo_support as support
from test_zoo_support import cache_files, make_checkpoint

from maple_zoo.errors import MapleZooError
from maple_zoo.zoo import promote_checkpoint, pull
from maple_zoo.zoo.index import read_index
from maple_zoo.zoo.promote import blob_key
from maple_zoo.zoo.pull import ENTRY_META
from maple_zoo.zoo.stores import NotFound, PreconditionFailed

moto_endpoint, zoo = support.moto_endpoint, support.zoo  # fixtures shared with the other zoo tests


def test_store_contract(zoo):
    store = zoo.open_store()
    etag = store.put_if_absent("a/b.txt", b"one")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("a/b.txt", b"two")
    with pytest.raises(PreconditionFailed):
        store.put_if_match("a/b.txt", b"two", "not-the-etag")
    with pytest.raises(PreconditionFailed):
        store.put_if_match("missing.txt", b"two", etag)
    etag2 = store.put_if_match("a/b.txt", b"two", etag)
    assert store.get("a/b.txt") == (b"two", etag2)
    assert store.exists("a/b.txt") and not store.exists("a/c.txt")
    store.put("a/c.txt", b"three")
    assert store.list("a/") == ["a/b.txt", "a/c.txt"] and store.list("zzz") == []
    with pytest.raises(NotFound):
        store.get("nope")
    for bad in ("../x", "/abs", "a//b", "a/./b", "a\\b", ""):
        with pytest.raises(MapleZooError):
            store.get(bad)


def test_round_trip(zoo, tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    p = promote_checkpoint(ck, config=zoo)
    assert (p.ref, p.added) == ("eurosat-16shot@v1", True)

    index, _ = read_index(zoo.open_store())
    rec = index.resolve("eurosat-16shot")
    assert rec.version == 1 and rec.card["num_classes"] == 3 and rec.card["metrics"]["hm"] == 78.75
    assert set(rec.files) == {"card.json", "prompts.safetensors"}
    assert rec.files["prompts.safetensors"].uri.startswith(zoo.open_store().url)

    entry = pull("eurosat-16shot", config=zoo)
    assert not entry.from_cache and entry.ref == "eurosat-16shot@v1"
    assert entry.prompts_path.read_bytes() == (ck / "prompts.safetensors").read_bytes()
    assert entry.card["classnames"] == ["forest", "river", "sea lake"]
    assert entry.card["files"]["prompts.safetensors"]["sha256"] == rec.files["prompts.safetensors"].sha256
    assert (entry.path / ENTRY_META).is_file()

    again = pull("eurosat-16shot@v1", config=zoo)
    assert again.from_cache and again.path == entry.path

    out = pull("eurosat-16shot", config=zoo, to=tmp_path / "out")
    assert out.path == tmp_path / "out" and (out.path / "prompts.safetensors").is_file()


def test_second_pull_does_not_download(zoo, tmp_path):
    promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=zoo)
    pull("eurosat-16shot", config=zoo)
    store = zoo.open_store()

    def boom(*a, **k):
        raise AssertionError("downloaded again")

    store.download = boom
    assert pull("eurosat-16shot", config=zoo, store=store).from_cache


def test_versions_pin_and_idempotence(zoo, tmp_path):
    a = promote_checkpoint(make_checkpoint(tmp_path / "a", seed=1), config=zoo)
    b = promote_checkpoint(make_checkpoint(tmp_path / "b", seed=2), config=zoo)
    same = promote_checkpoint(tmp_path / "b", config=zoo)
    assert (a.version, b.version) == (1, 2)
    assert (same.version, same.added) == (2, False)
    assert pull("eurosat-16shot", config=zoo).version == 2
    assert pull("eurosat-16shot@v1", config=zoo).card["seed"] == 1
    with pytest.raises(MapleZooError, match=r"has no version v7 \(have: v1, v2\)"):
        pull("eurosat-16shot@v7", config=zoo)
    # a custom name with a suffix
    assert promote_checkpoint(tmp_path / "a", "eurosat-16shot-coop", config=zoo).ref == "eurosat-16shot-coop@v1"


def test_concurrent_promotions_both_land(zoo, tmp_path):
    folders = [make_checkpoint(tmp_path / f"ck{i}", seed=i) for i in range(4)]
    barrier = threading.Barrier(len(folders))

    def go(folder):
        barrier.wait(timeout=30)
        return promote_checkpoint(folder, config=zoo)

    with ThreadPoolExecutor(len(folders)) as ex:
        results = list(ex.map(go, folders))
    assert sorted(r.version for r in results) == [1, 2, 3, 4]
    index, _ = read_index(zoo.open_store())
    recs = index.entries["eurosat-16shot"].versions
    assert sorted(r.version for r in recs) == [1, 2, 3, 4]
    assert {r.card["seed"] for r in recs} == {0, 1, 2, 3}
    for r in results:
        assert pull(r.ref, config=zoo).card["seed"] == r.record.card["seed"]


def test_corrupted_object_is_detected_and_not_cached(zoo, tmp_path):
    p = promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=zoo)
    store = zoo.open_store()
    key = p.record.files["prompts.safetensors"].key
    data, _ = store.get(key)
    store.put(key, data[:-4] + b"XXXX")  # same size, different bytes, behind the zoo's back
    with pytest.raises(MapleZooError, match=r"prompts.safetensors failed verification \(corrupt.*nothing was cached"):
        pull("eurosat-16shot", config=zoo)
    assert not [f for f in cache_files(zoo) if "/v1" in f or "partial" in f]


class _TruncatingStore:
    """Wraps a store; download delivers half the bytes, then either stops or dies."""

    def __init__(self, inner, die: bool):
        self.inner, self.die = inner, die

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def download(self, key, out, progress=None):
        data, _ = self.inner.get(key)
        out.write(data[: len(data) // 2])
        if self.die:
            raise ConnectionResetError("connection dropped mid-download")


@pytest.mark.parametrize("die", [False, True], ids=["truncated", "killed"])
def test_interrupted_download_caches_nothing(zoo, tmp_path, die):
    promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=zoo)
    broken = _TruncatingStore(zoo.open_store(), die)
    with pytest.raises(MapleZooError, match=r"interrupted \(connection dropped" if die else "truncated"):
        pull("eurosat-16shot", config=zoo, store=broken)
    assert [f for f in cache_files(zoo) if f.count("/") > 1] == []  # no entry, no partial folder
    assert pull("eurosat-16shot", config=zoo).card["seed"] == 1  # a later good pull works


def test_offline_pull(zoo, tmp_path):
    promote_checkpoint(make_checkpoint(tmp_path / "a", seed=1), config=zoo)
    promote_checkpoint(make_checkpoint(tmp_path / "b", seed=2), config=zoo)
    with pytest.raises(MapleZooError, match=r"'eurosat-16shot' is not in the cache \(offline\)"):
        pull("eurosat-16shot", config=zoo, offline=True)
    pull("eurosat-16shot@v1", config=zoo)
    # offline never opens the store: point it somewhere unusable
    cut_off = zoo.model_copy(update={"store": zoo.store})
    cut_off.__dict__["open_store"] = lambda: (_ for _ in ()).throw(AssertionError("store opened offline"))
    entry = pull("eurosat-16shot", config=cut_off, offline=True)
    assert entry.ref == "eurosat-16shot@v1" and entry.from_cache  # newest *cached* version
    with pytest.raises(MapleZooError, match=r"'eurosat-16shot@v2' is not in the cache"):
        pull("eurosat-16shot@v2", config=cut_off, offline=True)
    with pytest.raises(MapleZooError, match="did you mean: eurosat-16shot"):
        pull("eurosat-16shto", config=cut_off, offline=True)
    # a damaged cached file: offline refuses it, online repairs it
    (entry.path / "prompts.safetensors").write_bytes(b"rot")
    with pytest.raises(MapleZooError, match="is damaged"):
        pull("eurosat-16shot@v1", config=cut_off, offline=True)
    repaired = pull("eurosat-16shot@v1", config=zoo)
    assert not repaired.from_cache and repaired.card["seed"] == 1


def test_concurrent_pulls_share_one_cache_entry(zoo, tmp_path):
    promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=zoo)
    with ThreadPoolExecutor(4) as ex:
        entries = list(ex.map(lambda _: pull("eurosat-16shot", config=zoo), range(4)))
    assert len({e.path for e in entries}) == 1
    assert not [f for f in cache_files(zoo) if "partial" in f or "trash" in f]
    assert json.loads((entries[0].path / "card.json").read_text())["seed"] == 1


def test_unknown_name_suggests_close_ones(zoo, tmp_path):
    promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=zoo)
    promote_checkpoint(make_checkpoint(tmp_path / "ck2", dataset="dtd", shots=4), config=zoo)
    with pytest.raises(MapleZooError, match=r"unknown zoo entry 'eurosat-16shto' \(did you mean: eurosat-16shot\?\)"):
        pull("eurosat-16shto", config=zoo)
    with pytest.raises(MapleZooError, match="unknown zoo entry 'zzz'; 2 entries, see 'maple-zoo list'$"):
        pull("zzz", config=zoo)


def test_failed_promotion_leaves_nothing_visible(zoo, tmp_path):
    store = zoo.open_store()

    class FailingCardUpload:
        def __getattr__(self, name):
            return getattr(store, name)

        def put_if_absent(self, key, data):
            if data.lstrip().startswith(b"{"):  # the card, uploaded last
                raise ConnectionResetError("network gone")
            return store.put_if_absent(key, data)

    with pytest.raises(ConnectionResetError):
        promote_checkpoint(make_checkpoint(tmp_path / "ck"), store=FailingCardUpload())
    index, etag = read_index(store)
    assert index.entries == {} and etag is None


def test_tampered_blob_is_replaced_on_promotion(zoo, tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    first = promote_checkpoint(ck, config=zoo)
    store = zoo.open_store()
    key = blob_key(first.record.files["prompts.safetensors"].sha256)
    store.put(key, b"garbage")
    make_checkpoint(tmp_path / "ck")  # same content promoted under another name re-uploads the blob
    promote_checkpoint(ck, "eurosat-16shot-again", config=zoo)
    assert pull("eurosat-16shot", config=zoo).prompts_path.read_bytes() == (ck / "prompts.safetensors").read_bytes()


KILLED_PULL = """
import sys, time
from maple_zoo.zoo import pull
from maple_zoo.zoo.config import ZooConfig
cfg = ZooConfig(store=sys.argv[1], cache_dir=sys.argv[2])
store = cfg.open_store()
def stall(key, out, progress=None):
    out.write(store.get(key)[0][:10])
    out.f.flush()
    print("STARTED", flush=True)
    time.sleep(120)
store.download = stall
pull("eurosat-16shot", config=cfg, store=store)
"""


def test_killed_pull_process_leaves_no_entry(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from maple_zoo.zoo.config import ZooConfig
    from maple_zoo.zoo.pull import STALE_PARTIAL_S, _sweep_partials

    cfg = ZooConfig(store=str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    promote_checkpoint(make_checkpoint(tmp_path / "ck"), config=cfg)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PULL, cfg.store, str(cfg.cache_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "STARTED"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    name_dir = cfg.store_cache() / "eurosat-16shot"
    partials = list(name_dir.glob(".v1.partial-*"))
    assert len(partials) == 1 and not (name_dir / "v1").exists()  # the half file is invisible
    with pytest.raises(MapleZooError, match="not in the cache"):
        pull("eurosat-16shot", config=cfg, offline=True)
    assert pull("eurosat-16shot", config=cfg).card["seed"] == 1
    old = time.time() - STALE_PARTIAL_S - 10
    os.utime(partials[0], (old, old))
    _sweep_partials(name_dir)
    assert not partials[0].exists() and (name_dir / "v1").is_dir()


def test_concurrent_promotions_from_processes_local(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store"
    script = ("import sys; from maple_zoo.zoo import promote_checkpoint; from maple_zoo.zoo.stores import LocalStore;"
              "print(promote_checkpoint(sys.argv[1], store=LocalStore(sys.argv[2])).ref)")
    folders = [make_checkpoint(tmp_path / f"ck{i}", seed=i) for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(f), str(store)], stdout=subprocess.PIPE, text=True)
             for f in folders]
    refs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert refs == ["eurosat-16shot@v1", "eurosat-16shot@v2", "eurosat-16shot@v3"]
    from maple_zoo.zoo.stores import LocalStore

    index, _ = read_index(LocalStore(store))
    assert {r.card["seed"] for r in index.entries["eurosat-16shot"].versions} == {0, 1, 2}


def test_s3_misconfiguration_gives_one_line_errors(moto_endpoint, tmp_path):
    from maple_zoo.zoo.config import ZooConfig
    from maple_zoo.zoo.s3 import S3Options

    cases = [
        (S3Options(endpoint_url=moto_endpoint, profile="no-such-profile"), "s3://b/zoo", "cannot create the S3 client"),
        (S3Options(endpoint_url="http://user:pw@127.0.0.1:1", max_attempts=1), "s3://b/zoo", "cannot reach http://***@"),
        (S3Options(endpoint_url=moto_endpoint), "s3://no-such-bucket/zoo", "bucket 'no-such-bucket' does not exist"),
        (S3Options(endpoint_url=moto_endpoint), "s3:///zoo", "missing bucket name"),
    ]
    for options, url, message in cases:
        cfg = ZooConfig(store=url, s3=options, cache_dir=tmp_path / "cache")
        with pytest.raises(MapleZooError) as info:
            pull("eurosat-16shot", config=cfg)
        assert message in str(info.value) and "\n" not in str(info.value) and ":pw@" not in str(info.value)
