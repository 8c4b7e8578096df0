"""Promote a checkpoint folder (or an MLflow run's `checkpoint/` artifact) into the zoo.

Order matters, so that a promotion either fully lands or leaves nothing visible:
1. check the folder (card, safetensors header) and hash every file;
2. upload each file to a content-addressed key `blobs/sha256/<xx>/<sha256>` (put-if-absent);
3. read every object back and verify its sha256;
4. only then add `name@vN` to the index with a conditional write (retried on conflict).
A crash before step 4 leaves at most unreferenced blobs, never an index entry without its files.
Then, when the entry came from an MLflow run: tag the run and register a model version + alias.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MapleZooError
from ..mlflow_store import open_client
from .config import ZooConfig, load_config
from .index import FileRecord, VersionRecord, add_version, utc_now
from .names import default_name, format_ref, validate_filename, validate_name
from .stores import PreconditionFailed, ProgressFactory, Store

log = logging.getLogger(__name__)

CARD = "card.json"
PROMPTS = "prompts.safetensors"
CHECKPOINT_FORMAT = "maple-zoo/checkpoint/1"
# Resume-only state the training engine may leave in a checkpoint; never part of a zoo entry.
TRAINING_ONLY = {"optimizer.safetensors"}
MLFLOW_TAG = "maple_zoo.promoted_as"


@dataclass
class Promotion:
    name: str
    version: int
    record: VersionRecord
    store_url: str
    added: bool = True  # False: the newest version already had exactly this content
    model_version: str | None = None  # MLflow registry version, when registered
    warning: str | None = None  # a post-landing step (MLflow) that failed; the entry itself landed

    @property
    def ref(self) -> str:
        return format_ref(self.name, self.version)


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def _check_safetensors(path: Path) -> None:
    """Parse the safetensors header (8-byte length + JSON) without importing torch."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        ok = 0 < n <= size - 8
        if ok:
            try:
                ok = isinstance(json.loads(f.read(n)), dict)
            except ValueError:
                ok = False
    if not ok:
        raise MapleZooError(f"{path}: not a valid safetensors file")


def read_checkpoint(folder: str | Path) -> tuple[dict, dict[str, Path]]:
    """(card, {file name: path}) of a checkpoint folder, after checking it is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MapleZooError(f"{folder}: checkpoint folder not found")
    card_path = folder / CARD
    if not card_path.is_file():
        raise MapleZooError(f"{folder}: no {CARD} (is this a maple-zoo checkpoint folder?)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MapleZooError(f"{card_path}: not valid JSON") from None
    if not isinstance(card, dict) or card.get("format") != CHECKPOINT_FORMAT:
        raise MapleZooError(f"{card_path}: 'format' must be '{CHECKPOINT_FORMAT}'")
    for key in ("method", "backbone", "dataset", "shots"):
        if key not in card:
            raise MapleZooError(f"{card_path}: missing '{key}'")
    if not isinstance(card["method"], dict) or "name" not in card["method"]:
        raise MapleZooError(f"{card_path}: 'method' must be a mapping with a 'name'")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name in TRAINING_ONLY:
            continue
        if not p.is_file():
            raise MapleZooError(f"{p}: checkpoint folders hold plain files only")
        files[validate_filename(p.name)] = p
    if PROMPTS not in files:
        raise MapleZooError(f"{folder}: no {PROMPTS}")
    for name, p in files.items():
        if name.endswith(".safetensors"):
            _check_safetensors(p)
    return card, files


def card_summary(card: dict) -> dict:
    """The card's fields for the index; the class list (maybe 1000 names) becomes a count."""
    summary = {k: v for k, v in card.items() if k not in ("classnames", "files")}
    if isinstance(card.get("classnames"), list):
        summary["num_classes"] = len(card["classnames"])
    return summary


def _hash_stream(store: Store, key: str) -> tuple[str, int]:
    class _Sink:
        def __init__(self):
            self.h, self.n = hashlib.sha256(), 0

        def write(self, b: bytes) -> None:
            self.h.update(b)
            self.n += len(b)

    sink = _Sink()
    store.download(key, sink)
    return sink.h.hexdigest(), sink.n


def _upload_verified(store: Store, data: bytes, sha: str, label: str, progress: ProgressFactory | None) -> str:
    key = blob_key(sha)
    advance = progress(label, len(data)) if progress else None
    try:
        store.put_if_absent(key, data)
    except PreconditionFailed:
        pass  # same content already there (an earlier promotion); verified below like a fresh upload
    if _hash_stream(store, key) != (sha, len(data)):
        # A blob under its own hash with other content was tampered with or truncated: replace it once.
        log.warning("blob %s in %s did not match its sha256; re-uploading", key, store.url)
        store.put(key, data)
        if _hash_stream(store, key) != (sha, len(data)):
            raise MapleZooError(f"{store.uri(key)}: uploaded object does not verify (sha256 mismatch)")
    if advance:
        advance(len(data))
    return key


def promote_checkpoint(
    folder: str | Path,
    name: str | None = None,
    *,
    config: ZooConfig | None = None,
    store: Store | None = None,
    source_run: str | None = None,
    progress: ProgressFactory | None = None,
) -> Promotion:
    """Upload a checkpoint folder as the next version of `name` (default `<dataset>-<shots>shot`)."""
    if name:
        validate_name(name)  # before touching the folder: a bad name is the first thing to report
    card, files = read_checkpoint(folder)
    name = name or default_name(card["dataset"], card["shots"])
    store = store or (config or load_config()).open_store()
    source_run = source_run or card.get("mlflow_run_id")

    records: dict[str, FileRecord] = {}
    file_hashes = {}
    for fname, path in files.items():
        if fname == CARD:
            continue
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        key = _upload_verified(store, data, sha, fname, progress)
        records[fname] = FileRecord(key=key, uri=store.uri(key), sha256=sha, size=len(data))
        file_hashes[fname] = {"sha256": sha, "size": len(data)}

    # The stored card lists every other file's sha256, so its own sha256 pins the whole entry.
    stored_card = {**card, "files": file_hashes}
    if source_run:
        stored_card["mlflow_run_id"] = source_run
    card_bytes = (json.dumps(stored_card, indent=1, sort_keys=True) + "\n").encode()
    card_sha = hashlib.sha256(card_bytes).hexdigest()
    key = _upload_verified(store, card_bytes, card_sha, CARD, progress)
    records[CARD] = FileRecord(key=key, uri=store.uri(key), sha256=card_sha, size=len(card_bytes))

    created = utc_now()

    def make(version: int) -> VersionRecord:
        return VersionRecord(
            version=version,
            sha256=card_sha,
            size=sum(r.size for r in records.values()),
            created=created,
            source_run=source_run,
            card=card_summary(stored_card),
            files=dict(sorted(records.items())),
        )

    record, added = add_version(store, name, make)
    return Promotion(name=name, version=record.version, record=record, store_url=store.url, added=added)


def register_in_mlflow(promotion: Promotion, run_id: str, tracking_uri: str | None = None,
                       alias: str | None = "champion") -> str:
    """Tag the run with name@vN and register a model version (tagged with the sha256) + alias."""
    from mlflow.exceptions import MlflowException

    client = open_client(tracking_uri)
    client.set_tag(run_id, MLFLOW_TAG, promotion.ref)
    client.set_tag(run_id, "maple_zoo.sha256", promotion.record.sha256)
    try:
        client.create_registered_model(promotion.name, description=f"maple-zoo entry {promotion.name}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/checkpoint"
    mv = client.create_model_version(
        promotion.name, source=source, run_id=run_id,
        tags={"sha256": promotion.record.sha256, "zoo_ref": promotion.ref},
    )
    if alias:
        client.set_registered_model_alias(promotion.name, alias, mv.version)
    return str(mv.version)


def _record_run(promotion: Promotion, run_id: str, tracking_uri: str | None, alias: str | None) -> None:
    # The zoo entry has landed and stays authoritative; a registry hiccup is reported, not fatal.
    try:
        promotion.model_version = register_in_mlflow(promotion, run_id, tracking_uri, alias)
    except Exception as exc:  # noqa: BLE001 - any MLflow failure becomes a warning on a landed entry
        promotion.warning = f"{promotion.ref} landed, but recording it in MLflow failed: {type(exc).__name__}: {exc}"
        log.warning(promotion.warning)


def promote_from_mlflow_run(
    run_id: str,
    name: str | None = None,
    *,
    config: ZooConfig | None = None,
    store: Store | None = None,
    tracking_uri: str | None = None,
    alias: str | None = "champion",
    register: bool = True,
    progress: ProgressFactory | None = None,
) -> Promotion:
    """Promote the `checkpoint/` artifact of an MLflow run (what a sweep calls for its best trial)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if name:
        validate_name(name)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own progress reports the upload
    with tempfile.TemporaryDirectory(prefix="maple-zoo-promote-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoint", dst_path=tmp, tracking_uri=tracking_uri
            )
        except MlflowException as exc:
            raise MapleZooError(f"MLflow run {run_id}: cannot download its 'checkpoint' artifact: {exc.message}") from None
        except OSError as exc:
            raise MapleZooError(f"MLflow run {run_id}: cannot download its 'checkpoint' artifact: {exc}") from None
        promotion = promote_checkpoint(local, name, config=config, store=store, source_run=run_id, progress=progress)
    if register:
        _record_run(promotion, run_id, tracking_uri, alias)
    return promotion


def promote_from_checkpoint_and_record(
    folder: str | Path, name: str | None = None, *, config: ZooConfig | None = None,
    tracking_uri: str | None = None, alias: str | None = "champion", progress: ProgressFactory | None = None,
) -> Promotion:
    """promote_checkpoint, then record it in MLflow when the card names a run and a tracking URI is set."""
    promotion = promote_checkpoint(folder, name, config=config, progress=progress)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if promotion.record.source_run and tracking_uri:
        _record_run(promotion, promotion.record.source_run, tracking_uri, alias)
    return promotion
