"""The command line with bad input and reruns, as a new user meets it (issue #25): every case's exit code and message.

Convention: 0 done; 2 the user's input is wrong (one line naming the file or option and the fix, no traceback); 1 a
bug. Each case below failed at 8cc9fcb (a traceback, a wrong exit code, or a lie recorded in the checkpoint).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

TRAIN = ["--profile", "tiny", "--set", "cnnspot.steps=4", "--val-fraction", "0.25"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "udet_core", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _user_error(r, *words):
    """rc 2, one message on stderr naming what is wrong, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    for w in words:
        assert w in r.stderr, (w, r.stderr[-1500:])


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny file that declares a width x height RGB PNG (a decompression bomb's header; no pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small 0_real/1_fake tree and one tiny CNNSpot checkpoint trained on it through the CLI."""
    from udet_core.data.synthetic import synthetic_tree
    root = tmp_path_factory.mktemp("cli")
    tree = root / "tree"
    synthetic_tree(tree, n_train=24, n_test=8, size=24, progress=False)
    ckpt = root / "ckpt"
    r = _cli("train", "cnnspot", "--data", tree, "--out", ckpt, "--run-dir", root / "run", *TRAIN)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training cnnspot at 16 px (profile tiny's data.resolution), policy center-crop, 4 steps" in r.stdout
    return root, tree, ckpt


def test_on_foreign_data_a_detector_trains_at_its_published_input_size():
    """On data other than udet-mini, `train` uses the detector's published input size (CNNSpot's 224 px crops, not
    the default profile's 32 px), unless --set data.resolution says otherwise or the profile keeps its own (tiny)."""
    from dataclasses import replace

    from udet_core.core.profiles import get_profile
    from udet_core.methods.base import detector_class, input_size
    p = get_profile("default")
    assert p.data.resolution == 32
    published = {name: input_size(detector_class(name), p, on_udet_mini=False, set_by_user=False)[0]
                 for name in ("craft", "dire", "aeroblade", "cnnspot", "unigendet")}
    assert published == {"craft": 256, "dire": 256, "aeroblade": 512, "cnnspot": 224, "unigendet": 224}
    assert input_size(detector_class("cnnspot"), p, on_udet_mini=True, set_by_user=False)[0] == 32
    own = replace(p, data=replace(p.data, resolution=64))
    assert input_size(detector_class("cnnspot"), own, on_udet_mini=False, set_by_user=True) == (
        64, "set by --set data.resolution")
    assert input_size(detector_class("cnnspot"), get_profile("tiny"), on_udet_mini=False, set_by_user=False)[0] == 16


def test_the_notebooks_read_foreign_data_at_each_detectors_input_size(world, tmp_path, monkeypatch):
    """`reproduce --data` (the workbench): on data other than udet-mini each detector is fitted and scored on the
    same rows read at its own input size (here CNNSpot's, set to 24 px, beside the tiny profile's 16 px), and under
    center-crop a published size larger than the images (AEROBLADE's 512 px) is capped at what they hold."""
    from dataclasses import replace

    from udet_core.methods.base import detector_class
    from udet_core.study import evaluation
    from udet_core.study.workbench import open_workbench
    _, tree, _ = world
    wb = open_workbench("tiny", data=tree, val_fraction=0.25, run_dir=tmp_path / "run")
    wb.p = replace(wb.p, data=replace(wb.p.data, foreign_resolution="published"))   # tiny keeps its own otherwise
    monkeypatch.setattr(detector_class("cnnspot"), "published_size", 24)
    cn = wb.for_detector("cnnspot")
    assert wb.images.shape[1:3] == (16, 16) and cn.images.shape[1:3] == (24, 24) and cn.p.data.resolution == 24
    assert cn.df.equals(wb.df) and wb.for_detector("cnnspot") is cn and cn.for_detector("cnnspot") is cn
    assert wb.for_detector("aeroblade").p.data.resolution == 24          # the 24 px images hold no more
    assert wb.data["input_px"] == {"cnnspot": 24, "aeroblade": 24}
    table = evaluation.comparison(wb, ["cnnspot"], [0]).long
    assert wb.fitted("cnnspot", seed=0).p.data.resolution == 24 and len(table) == 1    # one subset: all test
    assert table["n"].iloc[0] == (wb.df["split"] == "test").sum()
    sizes, score = [], evaluation.cached_scores
    monkeypatch.setattr(evaluation, "cached_scores", lambda det, x, *a, **k: sizes.append(x.shape[1]) or score(det, x, *a, **k))
    for study in (evaluation.comparison, evaluation.robustness, evaluation.format_bias):
        assert len(study(wb, ["cnnspot"], [0]).long) > 0
    assert sizes and set(sizes) == {24}                                    # every image scored at CNNSpot's size


def test_foreign_data_without_a_backbone_trains_from_the_profiles_stand_ins(world, tmp_path):
    """On the default profile (zoo stand-ins made at 32 px), a detector reading a folder at another input size starts
    from the profile's stand-ins (they used to be looked up at the input size and refused as "trained with other
    configs"), and center-crop caps AEROBLADE's published 512 px at what the 24 px images hold."""
    from udet_core.core.profiles import get_profile
    from udet_core.methods.base import detector_class, input_size
    assert input_size(detector_class("craft"), get_profile("default"), False, False, smallest_side=250)[0] == 248
    assert input_size(detector_class("craft"), get_profile("default"), False, False, smallest_side=300)[0] == 256
    _, tree, _ = world
    out = tmp_path / "aeroblade"
    r = _cli("train", "aeroblade", "--data", tree, "--out", out, "--run-dir", tmp_path / "run", "--val-fraction", "0.25")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training aeroblade at 24 px (the smallest image is 24 px, below aeroblade's published 512 px" in r.stdout
    meta = json.loads((out / "detector.json").read_text())
    assert meta["settings"]["resolution"] == 24 and meta["settings"]["profile"] == "default"


# ------------------------------------------------------------------ 1. a foreign resume never records a lie

def test_a_rerun_with_other_settings_is_refused_and_force_starts_fresh(world):
    root, tree, ckpt = world
    out = root / "resume"
    base = ["train", "cnnspot", "--data", tree, "--out", out, "--run-dir", root / "run", *TRAIN]
    assert _cli(*base).returncode == 0
    before = (out / "detector.json").read_text()
    r = _cli(*base)                                                  # the same settings: nothing to do
    assert r.returncode == 0 and "already holds this cnnspot checkpoint" in r.stdout
    for other, field in ((["--seed", "1"], "seed"), (["--set", "cnnspot.lr=0.5"], "profile.cnnspot.lr"),
                         (["--val-fraction", "0.5"], "val_fraction")):
        _user_error(_cli(*base, *other), "other settings", field, "--force")
        assert (out / "detector.json").read_text() == before        # nothing was trained or rewritten
    # an interrupted run (its training checkpoint, no detector.json yet) is refused the same way
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    (out / "detector.json").unlink()
    (out / "checkpoint").mkdir()
    _user_error(_cli(*base, "--seed", "1"), "other settings", "seed")
    r = _cli(*base, "--seed", "1", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "detector.json").read_text())["seed"] == 1
    assert json.loads((out / "run.json").read_text())["seed"] == 1


def test_a_checkpoint_folder_without_its_settings_or_with_foreign_files_is_refused(world):
    root, tree, ckpt = world
    old = root / "old"
    shutil.copytree(ckpt, old)
    (old / "run.json").unlink()                                      # as written before run.json existed
    _user_error(_cli("train", "cnnspot", "--data", tree, "--out", old, *TRAIN), "without run.json", "--force")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _user_error(_cli("train", "cnnspot", "--data", tree, "--out", foreign, *TRAIN), "other files")
    _user_error(_cli("train", "cnnspot", "--data", tree, "--out", foreign, *TRAIN, "--force"),
                "did not write")
    assert (foreign / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ 2. one bad file never ends a run

def test_a_decompression_bomb_and_an_image_over_the_pixel_limit_are_bad_files(world):
    root, tree, ckpt = world
    imgs = root / "bombs"
    imgs.mkdir()
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(imgs / "fine.png")
    Image.fromarray(np.full((60, 60, 3), 90, np.uint8)).save(imgs / "large.png")
    _png_header_only(imgs / "bomb.png", 20000, 20000)
    out = root / "bombs.csv"
    r = _cli("detect", imgs, "--checkpoint", ckpt, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(pd.read_csv(out).path.map(lambda p: Path(p).name)) == ["fine.png", "large.png"]
    bad = pd.read_csv(out.with_suffix(".bad.csv"))
    assert list(bad.path.map(lambda p: Path(p).name)) == ["bomb.png"] and "pixels than the limit" in bad.problem[0]
    r = _cli("detect", imgs, "--checkpoint", ckpt, "--out", out, "--max-pixels", "2000")   # 60x60 > 2000 too
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(pd.read_csv(out).path.map(lambda p: Path(p).name)) == ["fine.png"]
    assert sorted(pd.read_csv(out.with_suffix(".bad.csv")).path.map(lambda p: Path(p).name)) == ["bomb.png", "large.png"]
    _user_error(_cli("detect", imgs, "--checkpoint", ckpt, "--out", out, "--max-pixels", "0"), "--max-pixels")


# ------------------------------------------------------------------ 3. checkpoints are checked, not trusted

@pytest.mark.parametrize("edit, words", [
    (lambda m: {**m, "threshold": "abc"}, ["threshold 'abc' is not a finite number"]),
    (lambda m: {**m, "threshold": float("nan")}, ["threshold nan is not a finite number"]),
    (lambda m: {**m, "threshold": 5}, ["outside [0, 1]"]),
    (lambda m: {**m, "name": "nope"}, ["names no known detector"]),
    (None, ["not valid JSON"]),
])
def test_a_damaged_checkpoint_is_refused_before_any_image_is_scored(world, edit, words):
    root, tree, ckpt = world
    bad = root / f"damaged-{len(list(root.glob('damaged-*')))}"
    shutil.copytree(ckpt, bad)
    meta = json.loads((bad / "detector.json").read_text())
    (bad / "detector.json").write_text("{broken" if edit is None else json.dumps(edit(meta)))
    out = root / "never.csv"
    _user_error(_cli("detect", tree / "test", "--checkpoint", bad, "--out", out), "detector.json", *words)
    assert not out.exists()
    # among several checkpoints, the damaged one stops `evaluate` before the good one is scored
    ev = root / "eval-damaged"
    _user_error(_cli("evaluate", "--data", tree, "--checkpoint", ckpt, bad, "--out", ev), *words)
    assert not (ev / "comparison.csv").exists()


# ------------------------------------------------------------------ 4-5. outputs checked first; nothing goes missing

def test_detect_checks_its_inputs_and_output_first_and_leaves_no_stale_side_file(world):
    root, tree, ckpt = world
    _user_error(_cli("detect", tree / "test", "--checkpoint", ckpt, "--out", root), "--out", "is a folder")
    _user_error(_cli("detect", root / "missing", "--checkpoint", ckpt, "--out", root / "m.csv"), "does not exist")
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    _user_error(_cli("detect", empty, "--checkpoint", ckpt, "--out", root / "e.csv"), "no image file")
    imgs = root / "stale"
    imgs.mkdir()
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(imgs / "good.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = root / "stale.csv"
    assert _cli("detect", imgs, "--checkpoint", ckpt, "--out", out).returncode == 0
    assert out.with_suffix(".bad.csv").exists()
    (imgs / "broken.png").unlink()
    assert _cli("detect", imgs, "--checkpoint", ckpt, "--out", out).returncode == 0
    assert not out.with_suffix(".bad.csv").exists() and len(pd.read_csv(out)) == 1
    _user_error(_cli("evaluate", "--data", tree, "--checkpoint", ckpt, "--out", out), "--out", "is a file")


# ------------------------------------------------------------------ 6. options

@pytest.mark.parametrize("args, words", [
    (["--val-fraction", "0"], ["--val-fraction", "between 0 and 1"]),
    (["--val-fraction", "1.5"], ["--val-fraction", "between 0 and 1"]),
    (["--set", "cnnspot.steps=abc"], ["--set", "cnnspot.steps='abc'", "expected a int"]),
    (["--set", "cnnspot.nosuch=1"], ["--set", "unknown setting"]),
    (["--batch-size", "0"], ["--batch-size"]),
])
def test_wrong_options_are_named_before_any_work(world, args, words):
    root, tree, ckpt = world
    out = root / "opt"
    _user_error(_cli("train", "cnnspot", "--data", tree, "--out", out, "--profile", "tiny", *args), *words)
    assert not out.exists()


def test_help_shows_every_default():
    texts = {cmd: " ".join(_cli(cmd, "--help").stdout.split()) for cmd in ("train", "detect", "evaluate", "reproduce")}
    assert "--seed SEED seed of initialisation and batch order (default: 0)" in texts["train"]
    assert "(default: udet-mini)" in texts["train"] and "(default: center-crop)" in texts["train"]
    assert "named configuration (default: default)" in texts["reproduce"]
    for cmd in ("train", "detect", "evaluate"):
        assert "images per scoring batch (default: 64)" in texts[cmd], cmd
        assert "decoding images (default: 0)" in texts[cmd], cmd
    assert "the one the checkpoint was trained with" in texts["detect"]


def test_result_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    """Atomic writes go through a mkstemp file (mode 0600); the finished file has the mode any other file would get
    (0666 minus the umask), so a lab's colleagues can read the tables."""
    import stat

    from udet_core.core.io import atomic_write_text, current_umask
    old = os.umask(0o027)
    try:
        f = atomic_write_text(tmp_path / "t.csv", "a,b\n")
        assert current_umask() == 0o027 and stat.S_IMODE(f.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    f = atomic_write_text(tmp_path / "u.csv", "a,b\n")
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~old


def test_evaluate_names_a_class_emptied_by_bad_files(world):
    """When every real test image is unreadable, `evaluate` says so (rc 2) instead of failing inside a metric."""
    root, tree, ckpt = world
    broken = root / "tree-no-reals"
    shutil.copytree(tree, broken)
    reals = sorted((broken / "test").rglob("0_real/*.png"))
    assert reals
    for f in reals:
        f.write_bytes(b"not an image")
    _user_error(_cli("evaluate", "--data", broken, "--checkpoint", ckpt, "--out", root / "eval-no-reals"),
                "0 real", "scoring needs both", "unreadable")


def test_train_refuses_a_validation_split_without_a_readable_class_before_training(world):
    """Unreadable files that empty a class of the validation split stop `train` before its first step (rc 2)."""
    root, tree, _ = world
    broken = root / "tree-bad-reals"
    shutil.copytree(tree, broken)
    for f in (broken / "train").rglob("0_real/*.png"):
        f.write_bytes(b"not an image")
    out = root / "ckpt-bad-reals"
    _user_error(_cli("train", "cnnspot", "--data", broken, "--out", out, "--run-dir", root / "run", *TRAIN),
                "0 readable real", "nothing was trained")
    assert not list(out.glob("**/*.safetensors"))


def test_an_output_in_use_by_a_live_run_is_refused_and_a_dead_runs_lock_taken_over(world):
    """Two runs never write one --out: a lock held by a live process refuses the second (rc 2); a lock left by a
    process that died is taken over, and removed when the run ends."""
    root, tree, ckpt = world
    out = root / "locked.csv"
    lock = Path(f"{out}.lock")
    lock.write_text(str(os.getpid()))                   # this test process: alive
    _user_error(_cli("detect", tree / "test", "--checkpoint", ckpt, "--out", out), "being written by another run",
                str(os.getpid()))
    assert not out.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())                # a process that has exited
    r = _cli("detect", tree / "test", "--checkpoint", ckpt, "--out", out)
    assert r.returncode == 0, r.stderr[-1500:]
    assert out.exists() and not lock.exists()
