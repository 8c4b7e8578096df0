"""The benchmark datasets, read from disk in the CoOp layout (docs/DATASETS.md of CoOp).

Each dataset is a `DatasetInfo` in `DATASETS`: where it lives under the data root, how its splits are
read, and its hand-crafted zero-shot template. `load_splits(name, root)` returns train/val/test lists
of `Datum(impath, label, classname)`. Readers:

- ``split_json``: ``split_zhou_<Name>.json`` = {"train"|"val"|"test": [[relative path, label, class name], ...]};
  when the file is missing for a plain class-per-folder dataset, the reference's 50/20/30 per-class
  split is generated (seeded) and saved next to it.
- ``imagenet``: ``images/{train,val}/<wnid>/*`` + ``classnames.txt`` (val is the test split).
- ``fgvc_aircraft``: the official ``images_variant_{train,val,test}.txt`` + ``variants.txt``.
- ``imagenet_variant``: test-only folders of ImageNet classes (V2 by index, Sketch/A/R by wnid).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MapleZooError, unknown
from ..fsutil import atomic_write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Datum:
    impath: str
    label: int
    classname: str


@dataclass
class Splits:
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]

    @property
    def classnames(self) -> list[str]:
        """Class names indexed by label, from every split (labels are dense 0..n-1)."""
        names: dict[int, str] = {}
        for d in self.train + self.val + self.test:
            names.setdefault(d.label, d.classname)
        return [names[i] for i in sorted(names)]


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # registry key used in configs, e.g. "eurosat"
    title: str  # the reference's DATASET.NAME, e.g. "EuroSAT"
    folder: str  # under the data root
    image_dir: str  # under `folder`
    template: str = "a photo of a {}."
    reader: str = "split_json"
    split_file: str | None = None
    paths_relative_to_folder: bool = False  # StanfordCars' json paths start at the dataset folder
    new_cnames: dict[str, str] = field(default_factory=dict)  # applied when generating a missing split
    ignored: tuple[str, ...] = ()  # folders skipped when generating a missing split
    can_generate_split: bool = False
    test_only: bool = False
    domain_of: str | None = None  # a shifted test domain of this dataset (domain generalisation)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training RandomResizedCrop area range (the reference's)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    DATASETS[info.name] = info
    return info


def get_dataset(name: str) -> DatasetInfo:
    _load_plugins()
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    return DATASETS[name]


def _load_plugins() -> None:
    """Datasets defined elsewhere (the procedural world) register themselves on import."""
    from . import world  # noqa: F401


EUROSAT_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

for _info in [
    DatasetInfo("imagenet", "ImageNet", "imagenet", "images", reader="imagenet"),
    DatasetInfo("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories",
                split_file="split_zhou_Caltech101.json", new_cnames=CALTECH_CNAMES,
                ignored=("BACKGROUND_Google", "Faces_easy"), can_generate_split=True),
    DatasetInfo("oxford_pets", "OxfordPets", "oxford_pets", "images",
                template="a photo of a {}, a type of pet.", split_file="split_zhou_OxfordPets.json"),
    DatasetInfo("stanford_cars", "StanfordCars", "stanford_cars", "",
                split_file="split_zhou_StanfordCars.json", paths_relative_to_folder=True),
    DatasetInfo("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg",
                template="a photo of a {}, a type of flower.", split_file="split_zhou_OxfordFlowers.json"),
    DatasetInfo("food101", "Food101", "food-101", "images",
                template="a photo of {}, a type of food.", split_file="split_zhou_Food101.json",
                can_generate_split=True),
    DatasetInfo("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images",
                template="a photo of a {}, a type of aircraft.", reader="fgvc_aircraft"),
    DatasetInfo("sun397", "SUN397", "sun397", "SUN397", split_file="split_zhou_SUN397.json"),
    DatasetInfo("dtd", "DescribableTextures", "dtd", "images", template="{} texture.",
                split_file="split_zhou_DescribableTextures.json", can_generate_split=True),
    DatasetInfo("eurosat", "EuroSAT", "eurosat", "2750", template="a centered satellite photo of {}.",
                split_file="split_zhou_EuroSAT.json", new_cnames=EUROSAT_CNAMES, can_generate_split=True),
    DatasetInfo("ucf101", "UCF101", "ucf101", "UCF-101-midframes",
                template="a photo of a person doing {}.", split_file="split_zhou_UCF101.json"),
    DatasetInfo("imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val",
                reader="imagenet_variant", test_only=True, domain_of="imagenet"),
    DatasetInfo("imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images",
                reader="imagenet_variant", test_only=True, domain_of="imagenet"),
    DatasetInfo("imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a",
                reader="imagenet_variant", test_only=True, domain_of="imagenet"),
    DatasetInfo("imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r",
                reader="imagenet_variant", test_only=True, domain_of="imagenet"),
]:
    register_dataset(_info)


# ---------------------------------------------------------------------------------------------- readers

def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MapleZooError(f"{what} not found: {path}")
    return path


def _read_split_json(path: Path, base: Path) -> Splits:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parts = {
            key: [Datum(str(base / p), int(label), str(name)) for p, label, name in raw[key]]
            for key in ("train", "val", "test")
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MapleZooError(f"{path}: not a CoOp split file ({type(exc).__name__}: {exc})") from None
    return Splits(**parts)


def _generate_split(info: DatasetInfo, image_dir: Path, split_path: Path) -> Splits:
    """The reference's DTD.read_and_split_data: per class 50% train, 20% val, rest test, seeded."""
    rng = random.Random(1)  # the reference uses the global RNG; any fixed seed gives a stable split
    train, val, test = [], [], []
    classes = sorted(c for c in os.listdir(image_dir) if (image_dir / c).is_dir() and c not in info.ignored)
    if not classes:
        raise MapleZooError(f"{image_dir}: no class folders found")
    for label, folder in enumerate(classes):
        images = sorted(f for f in os.listdir(image_dir / folder) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(images)
        n_train, n_val = round(len(images) * 0.5), round(len(images) * 0.2)
        name = info.new_cnames.get(folder, folder)
        items = [Datum(str(image_dir / folder / f), label, name) for f in images]
        train += items[:n_train]
        val += items[n_train:n_train + n_val]
        test += items[n_train + n_val:]
    splits = Splits(train, val, test)
    rel = {k: [[os.path.relpath(d.impath, image_dir), d.label, d.classname] for d in getattr(splits, k)]
           for k in ("train", "val", "test")}
    atomic_write_text(split_path, json.dumps(rel))
    return splits


def _read_classnames_txt(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise MapleZooError(f"class-name file not found: {path}")
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name
    return names


def _read_folders(image_dir: Path, folders: list[str], names: list[str]) -> list[Datum]:
    items = []
    for label, (folder, name) in enumerate(zip(folders, names)):
        for f in sorted(os.listdir(image_dir / folder)):
            if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                items.append(Datum(str(image_dir / folder / f), label, name))
    return items


def _read_imagenet(folder: Path, info: DatasetInfo) -> Splits:
    names = _read_classnames_txt(folder / "classnames.txt")
    image_dir = _require_dir(folder / info.image_dir, "ImageNet image folder")
    wnids = sorted(names)
    train = _read_folders(_require_dir(image_dir / "train", "ImageNet train folder"), wnids, [names[w] for w in wnids])
    test = _read_folders(_require_dir(image_dir / "val", "ImageNet val folder"), wnids, [names[w] for w in wnids])
    return Splits(train, test, test)


def _read_imagenet_variant(folder: Path, info: DatasetInfo) -> Splits:
    names = _read_classnames_txt(folder / "classnames.txt")
    image_dir = _require_dir(folder / info.image_dir, f"{info.title} image folder")
    present = sorted(f for f in os.listdir(image_dir) if (image_dir / f).is_dir())
    if info.name == "imagenetv2":  # folders are class indices 0..999 into the sorted wnids
        wnids = sorted(names)
        folders = sorted(present, key=int)
        classnames = [names[wnids[int(f)]] for f in folders]
    else:  # folders are wnids; labels are their sorted order (200 classes for -A and -R)
        folders = present
        classnames = [names[f] for f in folders]
    items = _read_folders(image_dir, folders, classnames)
    return Splits(items, [], items)


def _read_fgvc(folder: Path, info: DatasetInfo) -> Splits:
    variants_file = folder / "variants.txt"
    if not variants_file.is_file():
        raise MapleZooError(f"FGVCAircraft variants file not found: {variants_file}")
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label_of = {name: i for i, name in enumerate(classnames)}
    image_dir = folder / info.image_dir
    parts = {}
    for split in ("train", "val", "test"):
        path = folder / f"images_variant_{split}.txt"
        if not path.is_file():
            raise MapleZooError(f"FGVCAircraft split file not found: {path}")
        items = []
        for line in path.read_text().splitlines():
            if line.strip():
                imname, _, variant = line.strip().partition(" ")
                items.append(Datum(str(image_dir / f"{imname}.jpg"), label_of[variant], variant))
        parts[split] = items
    return Splits(**parts)


def load_splits(name: str, root: str | Path) -> Splits:
    """Train/val/test of dataset `name` under data root `root`, with labels 0..n-1."""
    info = get_dataset(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MapleZooError(f"data root not found: {root}")
    folder = _require_dir(root / info.folder, f"{info.title} folder")
    if info.reader == "imagenet":
        return _read_imagenet(folder, info)
    if info.reader == "imagenet_variant":
        return _read_imagenet_variant(folder, info)
    if info.reader == "fgvc_aircraft":
        return _read_fgvc(folder, info)
    image_dir = folder / info.image_dir
    split_path = folder / info.split_file
    if split_path.is_file():
        return _read_split_json(split_path, folder if info.paths_relative_to_folder else image_dir)
    if info.can_generate_split:
        return _generate_split(info, _require_dir(image_dir, f"{info.title} image folder"), split_path)
    raise MapleZooError(f"split file not found: {split_path} (download {info.split_file} from the CoOp data instructions)")
