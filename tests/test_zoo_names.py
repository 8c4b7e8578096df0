"""Names, references, config precedence, secret hiding, and the index / catalogue schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_zoo_support import make_checkpoint

from maple_zoo.errors import MapleZooError
from maple_zoo.zoo import promote_checkpoint
from maple_zoo.zoo.config import ZooConfig, load_config
from maple_zoo.zoo.index import ZooIndex, export_catalogue, import_catalogue, load_catalogue, read_index
from maple_zoo.zoo.names import default_name, parse_ref, validate_filename, validate_name
from maple_zoo.zoo.promote import read_checkpoint
from maple_zoo.zoo.stores import LocalStore

REPO = Path(__file__).resolve().parents[1]

HOSTILE = ["../x", "a/b", "a\\b", "UPPER", "Eurosat-16shot", "", "x..y", "..", ".", "/etc/passwd",
           "-lead", "trail-", "a b", "a\nb", "x" * 65, "eurosat-16shot@", "name;rm -rf", "ü-16shot", "~root"]


@pytest.mark.parametrize("name", ["eurosat-16shot", "imagenet-16shot-maple", "dtd-4shot_v2.1", "a", "x" * 64])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_refused_with_one_line(name):
    with pytest.raises(MapleZooError) as info:
        validate_name(name)
    msg = str(info.value)
    assert msg.startswith("invalid zoo name") and "\n" not in msg and len(msg) < 200


def test_refs():
    assert parse_ref("eurosat-16shot") == ("eurosat-16shot", None)
    assert parse_ref("eurosat-16shot@v12") == ("eurosat-16shot", 12)
    for bad in ["eurosat-16shot@12", "eurosat-16shot@v0", "eurosat-16shot@v-1", "eurosat-16shot@latest",
                "eurosat-16shot@v1@v2", "../x@v1"]:
        with pytest.raises(MapleZooError):
            parse_ref(bad)


def test_default_name_and_filenames():
    assert default_name("EuroSAT", 16) == "eurosat-16shot"
    assert default_name("Oxford Pets", 4, "coop") == "oxford-pets-4shot-coop"
    for bad in ["../card.json", "a/b", ".hidden", "", "x" * 200]:
        with pytest.raises(MapleZooError):
            validate_filename(bad)


def test_config_precedence(tmp_path, monkeypatch):
    for var in ("MAPLE_ZOO_STORE", "MAPLE_ZOO_CONFIG", "MAPLE_ZOO_S3_REGION", "MAPLE_ZOO_ZOO_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config().store == "./.maple-zoo/zoo"  # default
    monkeypatch.setenv("MAPLE_ZOO_CACHE", str(tmp_path / "c"))
    assert load_config().cache_root == tmp_path / "c" / "zoo"
    (tmp_path / "maple-zoo.yaml").write_text(
        "sweep: {anything: 1}\nzoo:\n  store: s3://from-file/zoo\n  s3:\n    region: eu-west-1\n    checksum: when_required\n"
    )
    cfg = load_config()
    assert (cfg.store, cfg.s3.region, cfg.s3.checksum) == ("s3://from-file/zoo", "eu-west-1", "when_required")
    monkeypatch.setenv("MAPLE_ZOO_STORE", "s3://from-env/zoo")
    monkeypatch.setenv("MAPLE_ZOO_S3_REGION", "us-west-2")
    cfg = load_config()
    assert (cfg.store, cfg.s3.region, cfg.s3.checksum) == ("s3://from-env/zoo", "us-west-2", "when_required")
    cfg = load_config(store="/from/flag", region="ap-south-1")
    assert (cfg.store, cfg.s3.region) == ("/from/flag", "ap-south-1")


def test_config_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo:\n  store: x\n  s3:\n    checksum: sometimes\n")
    with pytest.raises(MapleZooError, match=r"bad.yaml:4: zoo.s3.checksum"):
        load_config(bad)
    bad.write_text("zoo:\n  stroe: x\n")
    with pytest.raises(MapleZooError, match=r"bad.yaml:2: zoo.stroe: unknown key"):
        load_config(bad)


def test_repr_hides_credentials_in_urls():
    cfg = ZooConfig(store="s3://bucket/zoo")
    cfg.s3.endpoint_url = "https://AKIAKEY:supersecret@minio.internal:9000"
    text = repr(cfg) + str(cfg)
    assert "supersecret" not in text and "AKIAKEY" not in text and "minio.internal:9000" in text


def test_checkpoint_checks(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    (ck / "optimizer.safetensors").write_bytes((ck / "prompts.safetensors").read_bytes())  # resume-only state
    (ck / ".DS_Store").write_bytes(b"junk")
    _, files = read_checkpoint(ck)
    assert set(files) == {"card.json", "prompts.safetensors"}
    (ck / "sub").mkdir()
    with pytest.raises(MapleZooError, match="plain files only"):
        read_checkpoint(ck)
    (ck / "sub").rmdir()
    (ck / "prompts.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(MapleZooError, match="not a valid safetensors file"):
        read_checkpoint(ck)
    with pytest.raises(MapleZooError, match="checkpoint folder not found"):
        read_checkpoint(tmp_path / "nope")
    ck2 = make_checkpoint(tmp_path / "ck2")
    (ck2 / "card.json").write_text('{"format": "other"}')
    with pytest.raises(MapleZooError, match="'format' must be"):
        read_checkpoint(ck2)


def test_repo_catalogue_is_valid():
    index = load_catalogue(REPO / "zoo_index.yaml")
    assert index.schema_version == 1


def test_catalogue_export_import_round_trip(tmp_path):
    store = LocalStore(tmp_path / "store")
    promote_checkpoint(make_checkpoint(tmp_path / "a", seed=1), store=store)
    promote_checkpoint(make_checkpoint(tmp_path / "b", seed=2), store=store)
    index, _ = read_index(store)
    path = export_catalogue(index, tmp_path / "zoo_index.yaml")
    assert load_catalogue(path).to_data()["entries"] == index.to_data()["entries"]

    # a mirror holding the same blobs but no index learns the entries from the catalogue
    import shutil

    shutil.copytree(tmp_path / "store" / "blobs", tmp_path / "mirror" / "blobs")
    mirror = LocalStore(tmp_path / "mirror")
    assert import_catalogue(mirror, path) == ["eurosat-16shot@v1", "eurosat-16shot@v2"]
    assert import_catalogue(mirror, path) == []
    # a catalogue pointing at blobs the store lacks is refused
    with pytest.raises(MapleZooError, match="is not in"):
        import_catalogue(LocalStore(tmp_path / "empty"), path)


def test_index_rejects_hostile_content():
    rec = {"version": 1, "sha256": "a" * 64, "size": 1, "created": "x",
           "files": {"card.json": {"key": "blobs/x", "uri": "u", "sha256": "a" * 64, "size": 1}}}
    ZooIndex.model_validate({"entries": {"ok-1shot": {"versions": [rec]}}})
    bad_file = {**rec, "files": {"../../etc/passwd": rec["files"]["card.json"]}}
    bad_key = {**rec, "files": {"card.json": {**rec["files"]["card.json"], "key": "../outside"}}}
    for entries in ({"../x": {"versions": [rec]}}, {"ok": {"versions": [bad_file]}}, {"ok": {"versions": [bad_key]}}):
        with pytest.raises(ValueError):
            ZooIndex.model_validate({"entries": entries})
