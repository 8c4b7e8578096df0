"""Generated images laid out exactly like CoOp's EuroSAT (eurosat/2750/<Class>/*.jpg + split_zhou_EuroSAT.json).

Each class is a distinct colour blob on noise, so a short training run has something to learn.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture"]
NAMES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
         "Pasture Land"]


def make_eurosat(root: Path, per_class=(6, 2, 4), size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image_dir = root / "eurosat" / "2750"
    split = {"train": [], "val": [], "test": []}
    for label, (folder, name) in enumerate(zip(CLASSES, NAMES)):
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
        colour = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 181 + 30) % 256])
        i = 0
        for part, count in zip(("train", "val", "test"), per_class):
            for _ in range(count):
                pixels = rng.integers(0, 60, (size, size, 3))
                y, x = rng.integers(0, size // 2, 2)
                pixels[y:y + size // 2, x:x + size // 2] = colour
                rel = f"{folder}/{folder}_{i}.jpg"
                Image.fromarray(pixels.astype(np.uint8)).save(image_dir / rel, quality=95)
                split[part].append([rel, label, name])
                i += 1
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return root
