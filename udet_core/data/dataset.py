"""Data sets on disk, read lazily (torch `Dataset` + `DataLoader`), named by a file spec, one of
  - a manifest CSV (`manifest.COLUMNS`);
  - a FakeClue JSON file (its rows are the train split if the file name contains "train", else the test split);
  - a folder in DiffusionForensics, GenImage or `0_real/1_fake` layout (detected; see `detect_layout`).
(`world.specs` adds the name `udet-mini`, the embedded benchmark, which the world layer builds.)

Images of any size reach a detector through one named resolution policy (`POLICIES`), recorded in every result's
provenance: resizing rewrites exactly the high-frequency traces detectors read, so it is never done silently.
Bad files are reported (path + reason) by the batch that met them and skipped; rows keep their manifest index,
so a skipped file never shifts a label.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from udet_core.core.errors import DataError
from udet_core.core.progress import tqdm
from udet_core.data.images import center_crop_resize, load_rgb, to_tensor, walk_folders
from udet_core.data.manifest import FAKE, REAL, SPLITS, read_manifest
from udet_core.data.readers import (
    read_diffusionforensics,
    read_fakeclue,
    read_genimage,
    read_real_fake_folders,
)

POLICIES = {
    "center-crop": "the central SxS pixels at native scale (no resampling); smaller images are reported, not upscaled",
    "resize": "the largest central square, resampled (Lanczos) to SxS; upscales small images on request",
    "native": "native resolution, centre-cropped to a multiple of the model's down factor; batched one size at a time",
}


# ------------------------------------------------------------------ resolution policies

def center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """The central size x size pixels of an (H, W, 3) image, no resampling (policy `center-crop`)."""
    h, w = a.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"image is {w}x{h}, smaller than the detector's input {size}x{size} (policy center-crop "
                         "never upscales; choose --policy resize to upscale it deliberately)")
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def crop_to_multiple(a: np.ndarray, multiple: int) -> np.ndarray:
    """Centre-crop (H, W, 3) to the largest multiple of `multiple` on each side (policy `native`)."""
    h, w = a.shape[:2]
    nh, nw = h - h % multiple, w - w % multiple
    if min(nh, nw) == 0:
        raise ValueError(f"image is {w}x{h}, smaller than the model's down factor {multiple}")
    top, left = (h - nh) // 2, (w - nw) // 2
    return a[top:top + nh, left:left + nw]


def apply_policy(a: np.ndarray, policy: str, size: int, multiple: int = 8) -> np.ndarray:
    """An (H, W, 3) uint8 image as the detector sees it under `policy` (`POLICIES`)."""
    if policy == "center-crop":
        return center_crop(a, size)
    if policy == "resize":
        return a if a.shape[:2] == (size, size) else center_crop_resize(a, size)
    if policy == "native":
        return crop_to_multiple(a, multiple)
    raise ValueError(f"unknown resolution policy {policy!r}; choose one of {list(POLICIES)}")


# ------------------------------------------------------------------ specs

LAYOUTS = {"DiffusionForensics": "{split}/{dataset}/{generator}/...", "GenImage": "{generator}/{train,val}/{ai,nature}/...",
           "0_real/1_fake": ".../0_real/... and .../1_fake/..."}


def detect_layout(root) -> str:
    """Which of `LAYOUTS` a folder is in; `DataError` naming the folder and the layouts tried if none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder does not exist")
    children = [c for c in root.iterdir() if c.is_dir()]
    if any(d.name in ("0_real", "1_fake") for d in walk_folders(root)):
        return "0_real/1_fake"
    if children and all(c.name in SPLITS for c in children):
        return "DiffusionForensics"
    if children and any((c / s / k).is_dir() for c in children for s in ("train", "val") for k in ("ai", "nature")):
        return "GenImage"
    raise DataError(root, "this folder matches no known data set layout; tried "
                          + "; ".join(f"{k} ({v})" for k, v in LAYOUTS.items()))


def read_spec(spec) -> tuple[pd.DataFrame, dict]:
    """(manifest, description) of a file spec (module docstring)."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        df, layout = read_manifest(path), "manifest CSV"
    elif path.is_file() and path.suffix.lower() == ".json":   # FakeClue ships train.json and test.json
        split = "train" if "train" in path.stem.lower() else "test"
        df, layout = read_fakeclue(path, split=split), f"FakeClue JSON ({split} split)"
    elif path.is_dir():
        layout = detect_layout(path)
        reader = {"DiffusionForensics": read_diffusionforensics, "GenImage": read_genimage,
                  "0_real/1_fake": read_real_fake_folders}[layout]
        df = reader(path)
    elif path.exists():
        raise DataError(path, "not a data set: expected a manifest .csv, a FakeClue .json or a folder")
    else:
        raise DataError(path, "data set spec resolves to nothing: no such file or folder")
    return df, {"spec": str(path.resolve()), "layout": layout}


def check_split(df: pd.DataFrame, split: str, where) -> pd.DataFrame:
    """The rows of `split`; `DataError` naming `where` if it has no reals or no fakes."""
    rows = df[df["split"] == split]
    n_real, n_fake = int((rows["label"] == REAL).sum()), int((rows["label"] == FAKE).sum())
    if not n_real or not n_fake:
        raise DataError(where, f"the {split!r} split has {n_real} real and {n_fake} fake images; it needs both")
    return rows


def prepare_splits(df: pd.DataFrame, where, val_fraction: float | None = None, seed: int = 0,
                   splits=("train", "val")) -> pd.DataFrame:
    """The manifest a detector is trained / evaluated on: a `val` split carved from train when `val_fraction` is
    given (`split_validation`), then each of `splits` checked to hold reals and fakes (`DataError` naming `where`)."""
    if val_fraction:
        df = split_validation(df, val_fraction, seed)
    for split in splits:
        if split == "val" and not (df["split"] == "val").any():
            raise DataError(where, "has no 'val' split to calibrate thresholds on: carve one from train with "
                                   "--val-fraction F (the notebooks' parameter val_fraction; never from test)")
        check_split(df, split, where)
    return df


def split_validation(df: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """Carve a `val` split from `train` (never from `test`): within every (label, generator) stratum, a share
    `fraction` of its source groups (rows with the same non-empty `source` stay together; else single rows)."""
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {fraction}")
    df = df.copy()
    rng = np.random.default_rng(seed)
    train = df[df["split"] == "train"]
    for _, stratum in train.groupby(["label", "generator"]):
        groups = stratum["source"].where(stratum["source"] != "", stratum.index.astype(str))
        names = np.array(sorted(groups.unique()))
        n = int(round(fraction * len(names)))
        if n == 0 or n == len(names):
            continue   # too small a stratum to split: it stays in train
        chosen = set(rng.choice(names, n, replace=False))
        df.loc[stratum.index[groups.isin(chosen).to_numpy()], "split"] = "val"
    return df


# ------------------------------------------------------------------ the lazy data set

@dataclass
class Batch:
    """What the loader yields: the images that loaded (uint8 (N, H, W, 3)), their row indices in the data set,
    and the (path, problem) of every file of this batch that did not."""
    images: torch.Tensor
    index: torch.Tensor
    problems: list = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.index.pin_memory(), self.problems)


class ImageDataset(torch.utils.data.Dataset):
    """Rows of a manifest, each image read, checked and brought to the detector's input by `policy` on access."""

    def __init__(self, manifest: pd.DataFrame, size: int, policy: str = "center-crop", multiple: int = 8,
                 convert: bool = False, description: dict | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown resolution policy {policy!r}; choose one of {list(POLICIES)}")
        self.manifest = manifest.reset_index(drop=True)
        self.size, self.policy, self.multiple, self.convert = size, policy, multiple, convert
        self.description = dict(description or {})

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict:
        path = self.manifest["path"].iat[i]
        try:
            a = apply_policy(load_rgb(path, convert=self.convert), self.policy, self.size, self.multiple)
        except DataError as e:
            return {"index": i, "image": None, "problem": (e.path, e.problem)}
        except ValueError as e:
            return {"index": i, "image": None, "problem": (str(path), str(e))}
        return {"index": i, "image": torch.from_numpy(np.array(a)), "problem": None}   # a writable copy

    def subset(self, split: str) -> "ImageDataset":
        """The rows of one split (a new data set; indices restart at 0)."""
        rows = self.manifest[self.manifest["split"] == split]
        return ImageDataset(rows, self.size, self.policy, self.multiple, self.convert,
                            {**self.description, "split": split})

    def smallest_side(self, progress: bool = False) -> int:
        """The smallest height or width among the rows' files, from their headers (0 if none can be opened): the
        largest input policy `center-crop` can take from every row."""
        from PIL import Image
        sides = []
        for path in tqdm(self.manifest["path"], desc="image sizes", disable=not progress):
            try:
                with Image.open(path) as im:
                    sides.append(min(im.size))
            except Exception:   # an unreadable file is reported where it is read, not here
                continue
        return min(sides, default=0)

    def provenance(self) -> dict:
        """What every result computed on this data set records about it."""
        return {**self.description, "n_rows": len(self), "policy": self.policy, "policy_means": POLICIES[self.policy],
                "size": self.size, **({"multiple": self.multiple} if self.policy == "native" else {})}

    def loader(self, batch_size: int = 64, num_workers: int = 0, shuffle: bool = False, seed: int = 0,
               pin_memory: bool = False, rows=None) -> torch.utils.data.DataLoader:
        """A DataLoader of `Batch`es over all rows or the given `rows` (policy `native`: batch size 1, images
        differ in size); a batch's `index` is always the row's index in this data set."""
        g = torch.Generator().manual_seed(seed)
        data = self if rows is None else torch.utils.data.Subset(self, [int(r) for r in rows])
        return torch.utils.data.DataLoader(data, batch_size=1 if self.policy == "native" else batch_size,
                                           shuffle=shuffle, num_workers=num_workers, collate_fn=collate, generator=g,
                                           pin_memory=pin_memory, persistent_workers=False)

    def load(self, progress: bool = False, batch_size: int = 64, num_workers: int = 0):
        """(uint8 array (n, S, S, 3) of the rows that loaded, those manifest rows, problems): the in-memory path,
        for sets that fit in memory (training sets at the model's input size)."""
        images, index, problems = [], [], []
        for b in tqdm(self.loader(batch_size, num_workers), desc="load images", disable=not progress):
            images.append(b.images.numpy()), index.append(b.index.numpy()), problems.extend(b.problems)
        index = np.concatenate(index) if index else np.zeros(0, int)
        arr = np.concatenate(images) if images else np.zeros((0, self.size, self.size, 3), np.uint8)
        return arr, self.manifest.iloc[index].reset_index(drop=True), problems


class ArrayDataset(ImageDataset):
    """Images already in memory (uint8 (n, S, S, 3)) with their manifest rows, behind the same interface as
    `ImageDataset`: the in-memory path of the notebooks on udet-mini, and the reference streamed results are
    compared with."""

    def __init__(self, images: np.ndarray, manifest: pd.DataFrame, description: dict | None = None):
        if len(images) != len(manifest):
            raise ValueError(f"{len(images)} images but {len(manifest)} manifest rows")
        super().__init__(manifest, images.shape[1] if len(images) else 0, "center-crop",
                         description={"layout": "in memory", **(description or {})})
        self.images = images

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "image": torch.from_numpy(np.array(self.images[i])), "problem": None}

    def subset(self, split: str) -> "ArrayDataset":
        mask = (self.manifest["split"] == split).to_numpy()
        return ArrayDataset(self.images[mask], self.manifest[mask], {**self.description, "split": split})

    def load(self, progress: bool = False, batch_size: int = 64, num_workers: int = 0):
        return self.images, self.manifest, []


class RowExamples(torch.utils.data.Dataset):
    """A data set's rows as training examples for `train.fit`: example v = (uint8 image (S, S, 3) of row `rows[v]`,
    then each of `columns` at v), or {"problem": (path, reason)} for a file that could not be read (`train.fit`
    reports and skips it). `rows` (default: every row once) lets an example list repeat or reorder rows."""

    def __init__(self, ds: ImageDataset, *columns: torch.Tensor, rows=None):
        self.ds, self.columns = ds, columns
        self.rows = np.arange(len(ds)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, v: int):
        item = self.ds[int(self.rows[v])]
        if item["image"] is None:
            return {"problem": item["problem"]}
        return (item["image"], *(c[v] for c in self.columns))


def first_per_class(labels, n: int) -> np.ndarray:
    """Row indices of the first `n` rows of each class, reals first: a fixed class-balanced subset of a training set
    (the learning curves' training points)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in (REAL, FAKE)])


def pixels(example: tuple, rng=None, size: int | None = None) -> tuple:
    """A `RowExamples` example with its image as float pixels (3, S, S) in [-1, 1] (`images.to_tensor`, resized to
    `size` if given): the `transform` of `train.fit` for models that read pixels (run in the DataLoader workers)."""
    return (to_tensor(example[0][None].numpy(), size=size)[0], *example[1:])


def collate(items: list[dict]) -> Batch:
    good = [it for it in items if it["image"] is not None]
    images = (torch.stack([it["image"] for it in good]) if good else torch.zeros((0, 0, 0, 3), dtype=torch.uint8))
    return Batch(images, torch.tensor([it["index"] for it in good], dtype=torch.long),
                 [it["problem"] for it in items if it["image"] is None])


def open_dataset(spec, *, size: int, policy: str = "center-crop", multiple: int = 8,
                 convert: bool = False) -> ImageDataset:
    """The data set a file spec names (module docstring), read lazily at the detector's input `size` under
    `policy`."""
    df, description = read_spec(spec)
    return ImageDataset(df, size, policy, multiple, convert, description)


def readable_labels(ds: ImageDataset, batch_size: int = 64, num_workers: int = 0,
                    progress: bool = False) -> tuple[np.ndarray, list]:
    """(labels of the rows of `ds` whose files can be read, [(path, problem)] of those that cannot): one reading
    pass, nothing kept."""
    labels, problems = [], []
    for b in tqdm(ds.loader(batch_size, num_workers), desc="check files", disable=not progress):
        problems += b.problems
        labels.append(ds.manifest["label"].to_numpy()[b.index.numpy()])
    return (np.concatenate(labels) if labels else np.zeros(0, int)), problems
