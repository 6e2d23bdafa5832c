"""Readers of real data set layouts, on small fixture trees made here."""
import json

import numpy as np
import pytest
from PIL import Image

from udet_core.data import (
    DataError,
    read_diffusionforensics,
    read_fakeclue,
    read_real_fake_folders,
)
from udet_core.data.manifest import COLUMNS, read_manifest, write_manifest


def _png(path, value=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def test_diffusionforensics_layout(tmp_path):
    for split in ("train", "test"):
        for ds, gens in {"imagenet": ("real", "adm"), "lsun_bedroom": ("real", "sdv1", "iddpm")}.items():
            for g in gens:
                for i in range(2):
                    _png(tmp_path / split / ds / g / f"{i}.png")
    _png(tmp_path / "test" / "imagenet" / "adm" / "nested" / "deep.png")  # nested folders are read too
    df = read_diffusionforensics(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2 * 2 * 5 + 1
    assert set(df.split) == {"train", "test"} and set(df.domain) == {"imagenet", "lsun_bedroom"}
    assert ((df.generator == "real") == (df.label == 0)).all()
    assert set(df[df.label == 1].family) == {"adm", "sdv1", "iddpm"}


def test_diffusionforensics_rejects_unknown_split(tmp_path):
    _png(tmp_path / "training" / "imagenet" / "real" / "0.png")
    with pytest.raises(DataError, match="training"):
        read_diffusionforensics(tmp_path)


def test_real_fake_folders_layout(tmp_path):
    _png(tmp_path / "test" / "progan" / "car" / "0_real" / "a.png")
    _png(tmp_path / "test" / "progan" / "car" / "1_fake" / "b.png")
    _png(tmp_path / "test" / "stylegan" / "0_real" / "c.png")
    _png(tmp_path / "test" / "stylegan" / "1_fake" / "d.png")
    df = read_real_fake_folders(tmp_path).set_index("path")
    row = df.loc[str(tmp_path / "test" / "progan" / "car" / "1_fake" / "b.png")]
    assert (row.label, row.generator, row.domain, row.split) == (1, "progan", "car", "test")
    row = df.loc[str(tmp_path / "test" / "stylegan" / "0_real" / "c.png")]
    assert (row.label, row.family, row.role) == (0, "real", "real")


def test_real_fake_folders_flat_root_uses_root_name(tmp_path):
    root = tmp_path / "mygan"
    _png(root / "0_real" / "a.png"), _png(root / "1_fake" / "b.png")
    df = read_real_fake_folders(root, split="val")
    assert set(df.generator) == {"mygan"} and set(df.split) == {"val"}


def test_fakeclue_labels_are_inverted_explicitly(tmp_path):
    _png(tmp_path / "imgs" / "r.png"), _png(tmp_path / "imgs" / "f.png")
    entries = [
        {"image": "imgs/r.png", "label": 1, "cate": "real",
         "conversations": [{"from": "human", "value": "<image>Is this real?"}, {"from": "gpt", "value": "real. ok"}]},
        {"image": "imgs/f.png", "label": 0, "cate": "sdxl",
         "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "fake. hands"}]},
    ]
    (tmp_path / "clue.json").write_text(json.dumps(entries))
    df = read_fakeclue(tmp_path / "clue.json")
    assert df.label.tolist() == [0, 1]               # ours: 0 real, 1 fake
    assert df.explanation.tolist() == ["real. ok", "fake. hands"]
    assert df.family.tolist() == ["real", "sdxl"]
    assert df.path.tolist() == [str(tmp_path / "imgs" / "r.png"), str(tmp_path / "imgs" / "f.png")]


@pytest.mark.parametrize("entry,msg", [
    ({"image": "a.png", "conversations": []}, "lacks key"),
    ({"image": "a.png", "label": 2, "conversations": []}, "label 2"),
    ({"image": "a.png", "label": 1, "conversations": [{"from": "human", "value": "?"}]}, "no 'gpt' turn"),
])
def test_fakeclue_bad_entries(tmp_path, entry, msg):
    (tmp_path / "c.json").write_text(json.dumps([entry]))
    with pytest.raises(DataError, match=msg) as e:
        read_fakeclue(tmp_path / "c.json")
    assert "c.json" in str(e.value) and "entry 0" in str(e.value)


def test_manifest_round_trip_resolves_relative_paths(tmp_path):
    _png(tmp_path / "x" / "a.png")
    from udet_core.data.manifest import new_manifest
    df = new_manifest([{"path": "x/a.png", "label": 0, "split": "test", "role": "real", "family": "real"}])
    write_manifest(df, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back.path[0] == str(tmp_path / "x" / "a.png") and back.seed[0] == -1
