"""Readers that map real data set layouts onto the manifest schema (see `manifest.COLUMNS`).

- DiffusionForensics: `{root}/{train,val,test}/{imagenet,celebahq,lsun_bedroom,...}/{real,adm,sdv1,...}/...`
- GenImage: `{root}/{generator}/{train,val}/{ai,nature}/...`; GenImage's `val` is its test split
- ForenSynths / CNNSpot: any folder tree with `0_real` and `1_fake` leaves, e.g. `{root}/test/progan/car/1_fake`
- FakeClue JSON: a list of {"image", "label" (1 = real, 0 = fake), "conversations": [...]}
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from udet_core.core.errors import DataError
from udet_core.data.images import list_images, walk_folders
from udet_core.data.manifest import FAKE, REAL, SPLITS, new_manifest, validate


def read_diffusionforensics(root) -> pd.DataFrame:
    """Map `{root}/{split}/{dataset}/{generator}/**/image` onto the manifest; generator 'real' is real."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "DiffusionForensics root folder does not exist")
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if split_dir.name not in SPLITS:
            raise DataError(split_dir, f"unexpected folder: DiffusionForensics splits are {SPLITS}")
        for ds_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for gen_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir()):
                real = gen_dir.name == "real"
                for f in list_images(gen_dir):
                    rows.append({"path": str(f), "label": REAL if real else FAKE,
                                 "family": "real" if real else gen_dir.name, "generator": gen_dir.name,
                                 "domain": ds_dir.name, "split": split_dir.name, "role": "real" if real else ""})
    if not rows:
        raise DataError(root, "no images found in a {split}/{dataset}/{generator}/ layout")
    return validate(new_manifest(rows), root)


GENIMAGE_SPLITS = {"train": "train", "val": "test"}   # GenImage's `val` folders are the benchmark's test set


def read_genimage(root) -> pd.DataFrame:
    """Map `{root}/{generator}/{train,val}/{ai,nature}/**/image` onto the manifest: `nature` is real, `ai` fake;
    GenImage's `val` is the test split (it has no validation split: carve one from train, `split_validation`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "GenImage root folder does not exist")
    rows = []
    for gen_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder, split in GENIMAGE_SPLITS.items():
            for kind in ("nature", "ai"):
                d = gen_dir / folder / kind
                if not d.is_dir():
                    continue
                real = kind == "nature"
                for f in list_images(d):
                    rows.append({"path": str(f), "label": REAL if real else FAKE,
                                 "family": "real" if real else gen_dir.name, "generator": gen_dir.name,
                                 "domain": gen_dir.name, "split": split, "role": "real" if real else ""})
    if not rows:
        raise DataError(root, "no images found in a {generator}/{train,val}/{ai,nature}/ layout")
    return validate(new_manifest(rows), root)


def read_real_fake_folders(root, split: str = "test") -> pd.DataFrame:
    """Map every `.../0_real` and `.../1_fake` folder below `root` onto the manifest.

    The path between root and the class folder gives split (if its first part is train/val/test; else
    `split`), generator (next part) and domain (the rest): `test/progan/car/1_fake` -> test, progan, car.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder does not exist")
    class_dirs = [p for p in walk_folders(root) if p.name in ("0_real", "1_fake")]
    if not class_dirs:
        raise DataError(root, "no 0_real or 1_fake folders found below this folder")
    rows = []
    for d in class_dirs:
        parts = list(d.relative_to(root).parts[:-1])
        sp = parts.pop(0) if parts and parts[0] in SPLITS else split
        generator = parts.pop(0) if parts else root.name
        domain = "/".join(parts)
        real = d.name == "0_real"
        for f in list_images(d):
            rows.append({"path": str(f), "label": REAL if real else FAKE, "family": "real" if real else generator,
                         "generator": generator, "domain": domain, "split": sp, "role": "real" if real else ""})
    return validate(new_manifest(rows), root)


def read_fakeclue(json_path, image_root=None, split: str = "test") -> pd.DataFrame:
    """Map a FakeClue JSON file onto the manifest. FakeClue label 1 = real, 0 = fake: converted here.

    The explanation is the assistant's (gpt) answer; the caption is left empty.
    """
    json_path = Path(json_path)
    image_root = Path(image_root) if image_root is not None else json_path.parent
    if not json_path.is_file():
        raise DataError(json_path, "FakeClue JSON file does not exist")
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(json_path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(json_path, f"not UTF-8 text ({e})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(json_path, "expected a non-empty JSON list of entries")
    rows = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DataError(json_path, f"entry {i} is a {type(e).__name__}, expected an object")
        missing = [k for k in ("image", "label", "conversations") if k not in e]
        if missing:
            raise DataError(json_path, f"entry {i} lacks key(s) {missing}")
        if e["label"] not in (0, 1) or isinstance(e["label"], bool):
            raise DataError(json_path, f"entry {i} has label {e['label']!r}; FakeClue labels are 1 (real) or 0 (fake)")
        answers = [c.get("value", "") for c in e["conversations"] if isinstance(c, dict) and c.get("from") == "gpt"]
        if not answers:
            raise DataError(json_path, f"entry {i} has no 'gpt' turn in its conversations")
        real = e["label"] == 1
        p = Path(e["image"])
        generator = e.get("cate", "real" if real else "unknown")
        rows.append({"path": str(p if p.is_absolute() else image_root / p), "label": REAL if real else FAKE,
                     "family": "real" if real else str(generator), "generator": str(generator),
                     "domain": str(e.get("domain", "")), "split": split, "role": "real" if real else "",
                     "explanation": answers[0]})
    return validate(new_manifest(rows), json_path)
