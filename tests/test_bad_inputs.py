"""The bad-input corpus: every case becomes a DataError naming the file and the problem."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from udet_core.data import (
    DataError,
    list_images,
    load_many,
    load_rgb,
    read_fakeclue,
    read_manifest,
)
from udet_core.data.manifest import COLUMNS, load_images, new_manifest


def _rgb(n=16):
    return (np.arange(n * n * 3) % 251).astype(np.uint8).reshape(n, n, 3)


def _write_png16_rgb(path, a):
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_corpus(d):
    """Write one file per bad case; returns {case: (path, expected message fragment)}."""
    d.mkdir(parents=True, exist_ok=True)
    good = d / "good.png"
    Image.fromarray(_rgb()).save(good)
    cases = {}
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    cases["corrupt"] = (d / "corrupt.png", "corrupt or truncated")
    (d / "truncated.png").write_bytes(good.read_bytes()[:-60])
    cases["truncated"] = (d / "truncated.png", "corrupt or truncated")
    Image.fromarray(_rgb(64)).save(d / "truncated.jpg", quality=90)
    (d / "truncated.jpg").write_bytes((d / "truncated.jpg").read_bytes()[:400])
    cases["truncated_jpeg"] = (d / "truncated.jpg", "corrupt or truncated")
    (d / "notes.png").write_text("this is not an image\n")
    cases["non_image"] = (d / "notes.png", "not an image")
    (d / "empty.png").write_bytes(b"")
    cases["empty_file"] = (d / "empty.png", "empty file")
    Image.fromarray(np.dstack([_rgb(), np.full((16, 16), 128, np.uint8)])).save(d / "rgba.png")
    cases["rgba"] = (d / "rgba.png", "alpha channel")
    Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(d / "gray16.png")
    cases["gray_16bit"] = (d / "gray16.png", "16-bit grayscale")
    _write_png16_rgb(d / "rgb16.png", _rgb().astype(np.uint16) * 257)
    cases["rgb_16bit"] = (d / "rgb16.png", "16-bit per channel RGB")
    Image.fromarray(_rgb()).convert("P").save(d / "palette.png")
    cases["palette"] = (d / "palette.png", "palette")
    Image.fromarray(_rgb()[..., 0]).save(d / "gray.png")
    cases["grayscale"] = (d / "gray.png", "grayscale (L)")
    Image.fromarray(_rgb(4)).save(d / "tiny.png")
    cases["too_small"] = (d / "tiny.png", "smaller than the required 8x8")
    cases["missing"] = (d / "does_not_exist.png", "does not exist")
    return good, cases


def test_bad_image_corpus(tmp_path):
    good, cases = make_corpus(tmp_path / "corpus")
    assert load_rgb(good, min_size=8).shape == (16, 16, 3)
    for case, (path, fragment) in cases.items():
        with pytest.raises(DataError) as e:
            load_rgb(path, min_size=8)
        assert str(path) in str(e.value), case
        assert fragment in str(e.value), (case, str(e.value))


@pytest.mark.parametrize("name", ["rgba.png", "gray16.png", "rgb16.png", "palette.png", "gray.png"])
def test_convert_on_purpose(tmp_path, name):
    make_corpus(tmp_path / "corpus")
    a = load_rgb(tmp_path / "corpus" / name, convert=True)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)


def test_bulk_load_skips_and_reports_without_changing_labels(tmp_path):
    good, cases = make_corpus(tmp_path / "corpus")
    paths = [good, cases["corrupt"][0], good, cases["rgba"][0]]
    df = new_manifest([{"path": str(p), "label": i % 2, "split": "test", "role": ""} for i, p in enumerate(paths)])
    df.loc[2, "path"] = str(tmp_path / "corpus" / "good_copy.png")
    (tmp_path / "corpus" / "good_copy.png").write_bytes(good.read_bytes())
    images, kept, problems = load_images(df)
    assert len(images) == 2 and kept.label.tolist() == [0, 0]
    assert kept.path.tolist() == [str(good), str(tmp_path / "corpus" / "good_copy.png")]
    assert [p for p, _ in problems] == [str(cases["corrupt"][0]), str(cases["rgba"][0])]
    arrays, idx, probs = load_many(paths)
    assert idx == [0, 2] and len(probs) == 2


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files") as e:
        list_images(tmp_path / "empty")
    assert "empty" in str(e.value)
    with pytest.raises(DataError, match="folder does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="is a folder"):
        load_rgb(tmp_path / "empty")


def test_manifest_missing_column(tmp_path):
    pd.DataFrame({"path": ["a.png"], "label": [0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['split'\]; a manifest needs \['path', 'label', 'split'\]") as e:
        read_manifest(tmp_path / "m.csv")
    assert "m.csv" in str(e.value)


def test_manifest_needs_only_path_label_split(tmp_path):
    """The other columns are optional: '' (seed -1) when a lab's manifest leaves them out; extra columns are kept."""
    pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1], "split": ["train", "test"],
                  "notes": ["x", "y"]}).to_csv(tmp_path / "m.csv", index=False)
    df = read_manifest(tmp_path / "m.csv")
    assert list(df.columns[:len(COLUMNS)]) == list(COLUMNS) and df["notes"].tolist() == ["x", "y"]
    assert df["family"].tolist() == ["", ""] and df["seed"].tolist() == [-1, -1] and df["label"].tolist() == [0, 1]


def test_manifest_errors_name_csv_lines(tmp_path):
    """A bad value is reported by the line a user sees in the CSV (the header is line 1)."""
    (tmp_path / "m.csv").write_text("path,label,split\na.png,0,train\nb.png,fake,train\nc.png,1,tset\n")
    with pytest.raises(DataError, match=r"CSV line\(s\) \[3\] have \['fake'\]"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,0,train\nb.png,1,train\nc.png,1,tset\n")
    with pytest.raises(DataError, match=r"split must be one of .*CSV line\(s\) \[4\] have \['tset'\]"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_bad_values(tmp_path):
    df = new_manifest([{"path": "a.png", "label": 3, "split": "test", "role": ""}])
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="label must be 0"):
        read_manifest(tmp_path / "m.csv")
    df = new_manifest([{"path": "a.png", "label": 1, "split": "testing", "role": ""}])
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="split must be one of"):
        read_manifest(tmp_path / "m.csv")


def test_malformed_json(tmp_path):
    (tmp_path / "clue.json").write_text('[{"image": "a.png", "label": 1,,}]')
    with pytest.raises(DataError, match=r"malformed JSON at line 1, column \d+") as e:
        read_fakeclue(tmp_path / "clue.json")
    assert "clue.json" in str(e.value)
    (tmp_path / "obj.json").write_text(json.dumps({"image": "a.png"}))
    with pytest.raises(DataError, match="non-empty JSON list"):
        read_fakeclue(tmp_path / "obj.json")


def test_folder_scan_follows_symlinks_once_and_lists_what_it_skips(tmp_path):
    """Symlinked folders are scanned (a link back up the tree only once); files of other types are listed with the
    reason they are not scored, never dropped silently."""
    import os

    from udet_core.data.images import scan_folder
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir(), elsewhere.mkdir()
    Image.fromarray(_rgb()).save(root / "a.png")
    Image.fromarray(_rgb()).save(elsewhere / "b.png")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink(root, root / "loop")                     # a cycle: must not be walked forever
    for name in ("c.gif", "d.jfif", "noext"):
        (root / name).write_bytes(b"x")
    images, others = scan_folder(root)
    assert [p.name for p in images] == ["a.png", "b.png"]
    assert sorted(Path(p).name for p, _ in others) == ["c.gif", "d.jfif", "noext"]
    assert all("unsupported file type" in why for _, why in others)
    assert "(no extension)" in dict((Path(p).name, w) for p, w in others)["noext"]
