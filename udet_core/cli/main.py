"""Command line: `python -m udet_core reproduce|build-benchmark|pretrain|train|detect|evaluate|bench ...` (see --help
on each)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from udet_core.cli.reproduce import reproduce
from udet_core.core.errors import DataError
from udet_core.core.io import (
    atomic_write_json,
    atomic_write_text,
    checkpoint_meta,
    output_lock,
    write_table,
)
from udet_core.core.paths import default_run_dir
from udet_core.core.profiles import PROFILES, config_dict, get_profile, with_settings
from udet_core.core.provenance import PeakRSS, Timer, provenance
from udet_core.data.dataset import (
    POLICIES,
    ImageDataset,
    prepare_splits,
    readable_labels,
)
from udet_core.data.images import scan_folder, set_max_pixels
from udet_core.data.manifest import FAKE, REAL
from udet_core.methods.base import (
    create_detector,
    detector_class,
    fit_detector,
    input_size,
    list_detectors,
    score_dataset,
)
from udet_core.models.real_architecture import real_architecture_bench
from udet_core.study import bench
from udet_core.study.evaluation import evaluate_checkpoints
from udet_core.study.workbench import open_workbench
from udet_core.world import zoo
from udet_core.world.benchmark import build_benchmark, counts_table
from udet_core.world.specs import EMBEDDED, open_dataset
from udet_core.world.weights import reload_detector, weights_for


def _run_args(parser, force: bool = True) -> None:
    """The arguments every command on udet-mini shares: profile, run dir, seed (and --force)."""
    parser.add_argument("--profile", default="default", choices=list(PROFILES), help="named configuration")
    parser.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order")
    if force:
        parser.add_argument("--force", action="store_true", help="rebuild cached artifacts instead of reusing them")


DATA_HELP = ("data set: 'udet-mini' (the embedded synthetic stand-in), a manifest CSV, a FakeClue JSON, or a folder in "
             "DiffusionForensics, GenImage or 0_real/1_fake layout")


def _data_args(parser, policy_default: str | None = "center-crop") -> None:
    """How images are read: resolution policy, batch size, loader workers."""
    parser.add_argument("--policy", choices=list(POLICIES), default=policy_default,
                        help="resolution policy: " + "; ".join(f"{k}: {v}" for k, v in POLICIES.items())
                        + ("" if policy_default else " (default: the one the checkpoint was trained with)"))
    parser.add_argument("--batch-size", type=int, default=64, help="images per scoring batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes decoding images")
    parser.add_argument("--max-pixels", type=int, default=None, help="largest image (pixels) to decode; larger files "
                        "are listed as bad files and skipped (default: PIL's decompression-bomb limit, 89478485)")


class _Help(argparse.HelpFormatter):
    """--help shows every option's default (unless its help already says what it is)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if ("default" in h or action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or not action.option_strings):
            return h
        return f"{h} (default: %(default)s)".strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udet_core", description=__doc__, formatter_class=_Help)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *args, **kw: _add_parser(*args, formatter_class=_Help, **kw)

    r = sub.add_parser("reproduce", help="execute notebooks 00-05 with papermill (executed copies in the run dir)")
    _run_args(r)
    r.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 00,03")
    r.add_argument("--data", default="udet-mini", help="data-set spec the notebooks run on: udet-mini (the default), a "
                   "manifest .csv, a FakeClue .json, or a DiffusionForensics / GenImage / 0_real/1_fake folder "
                   "(held in memory, each detector's copy at its input size; larger sets: train / evaluate)")
    r.add_argument("--backbone", default=None, help="a diffusers SD Image Variation pipeline folder for CRAFT, DIRE "
                   "and AEROBLADE (default: the profile's stand-ins)")
    r.add_argument("--val-fraction", type=float, default=None, help="carve a val split of this share from train "
                   "(by source and generator, never from test) when the data set has none")

    _run_args(sub.add_parser("build-benchmark", help="build (or reuse) the embedded benchmark udet-mini only"))

    pt = sub.add_parser("pretrain", help="train the pretrained zoo (data/zoo/<name>: safetensors + model card); "
                        "resumable, hours on CPU")
    pt.add_argument("--only", default=None, help="comma-separated zoo models (default: all, dependencies first)")
    pt.add_argument("--force", action="store_true", help="retrain even when a verified model exists")

    tr = sub.add_parser("train", help="train any registered detector on a data set; its threshold is calibrated on "
                        "the data set's val split")
    tr.add_argument("detector", choices=list_detectors())
    tr.add_argument("--data", default="udet-mini", help=DATA_HELP)
    tr.add_argument("--out", required=True, help="checkpoint folder to write (a rerun with the same settings resumes "
                    "an interrupted fit; other settings are refused)")
    tr.add_argument("--force", action="store_true", help="remove a previous run from --out and train from scratch")
    tr.add_argument("--backbone", action="append", default=None,
                    help="backbone path replacing the stand-in (CRAFT, DIRE: an image-variation pipeline folder; "
                    "AEROBLADE: autoencoder folders, repeat the option for several)")
    _run_args(tr, force=False)
    tr.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                    help="profile setting to change, repeatable: e.g. --set data.resolution=256 --set craft.steps=2000")
    tr.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                    help="accelerate's mixed precision for training (GPUs; default: accelerate's configuration)")
    tr.add_argument("--val-fraction", type=float, default=None,
                    help="carve a val split from train (by generator and source; never from test) when the data set "
                    "has none")
    _data_args(tr)

    d = sub.add_parser("detect", help="score images with any detector's checkpoint; writes one CSV row per image")
    d.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    d.add_argument("--checkpoint", required=True, help="checkpoint folder written by `train` (or a fitted detector's artifact folder)")
    d.add_argument("--out", required=True, help="CSV to write: path, score, label, detector, threshold; bad files "
                   "go to <out stem>.bad.csv")
    d.add_argument("--fast", action="store_true", help="CRAFT-fast: invert only through the fine-tuned segment (a "
                   "different detector: its suffix was trained on full-mode inputs; own validation threshold)")
    _data_args(d, policy_default=None)

    ev = sub.add_parser("evaluate", help="comparison and per-family tables of trained checkpoints on a data set's "
                        "test split (CSV + Markdown + provenance JSON)")
    ev.add_argument("--data", default="udet-mini", help=DATA_HELP)
    ev.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint folders written by `train`")
    ev.add_argument("--out", required=True, help="folder for the tables")
    _data_args(ev, policy_default=None)


    be = sub.add_parser("bench", help="performance benchmarks")
    be.add_argument("what", choices=["craft-cache", "craft-detect", "craft-distance", "make-tree", "streaming",
                                     "real-architecture"])
    _run_args(be, force=False)
    be.add_argument("--n-steps", type=int, default=50)
    be.add_argument("--k", type=int, default=15)
    be.add_argument("--checkpoint", default=None, help="for craft-detect: a CRAFT checkpoint folder")
    be.add_argument("--train", default="encoder,unet,decoder", help="for craft-cache: modules that train")
    be.add_argument("--out", default=None, help="for make-tree: the folder to write the synthetic 0_real/1_fake tree")
    be.add_argument("--n-train", type=int, default=2000, help="for make-tree")
    be.add_argument("--n-test", type=int, default=8000, help="for make-tree (half reals, half fakes)")
    be.add_argument("--size", type=int, default=None,
                    help="image side in pixels: for make-tree (default 512) and real-architecture (default 256)")
    be.add_argument("--data", default=None, help="for streaming: the data set spec (its test split is read)")
    be.add_argument("--n", type=int, default=1000, help="for streaming: images (a subset that fits in memory)")
    be.add_argument("--workers", type=int, default=2, help="for streaming: DataLoader workers")
    be.add_argument("--widths", default="sd-v1", choices=["sd-v1", "reduced"],
                    help="for real-architecture: Stable Diffusion v1's sizes or the same blocks at reduced widths")
    be.add_argument("--modules", default="decoder,encoder,encoder+decoder",
                    help="for real-architecture: CRAFT module choices to train, comma-separated ('all', 'unet', ...)")
    be.add_argument("--budget-mb", type=int, default=17_000,
                    help="for real-architecture: skip a choice whose parameter memory alone exceeds this")

    a = ap.parse_args(argv)
    try:
        _check_args(a)
        set_max_pixels(getattr(a, "max_pixels", None))
        writes = a.cmd in ("train", "detect", "evaluate") and os.environ.get("RANK", "0") == "0"
        with output_lock(a.out) if writes else contextlib.nullcontext():   # one run per --out at a time
            return _run(ap, a)
    except DataError as e:   # bad input, a missing or corrupt zoo model, ...: one message naming it, no traceback
        print(f"udet {a.cmd}: {e}", file=sys.stderr)
        return 2


def _check_args(a) -> None:
    """Options that are wrong whatever the data: a `DataError` naming the option and the fix, before any work."""
    vf = getattr(a, "val_fraction", None)
    if vf is not None and not 0.0 < vf < 1.0:
        raise DataError("--val-fraction", f"{vf} is not a share of the training rows: give a number between 0 and 1 "
                                          "(e.g. 0.1), or leave it out when the data set has a val split")
    for name in ("batch_size", "workers"):
        v = getattr(a, name, None)
        if v is not None and (v < 0 or (name == "batch_size" and v == 0)):
            raise DataError(f"--{name.replace('_', '-')}", f"{v} is not allowed (a batch size >= 1, workers >= 0)")


def _run(ap, a) -> int:
    if a.cmd == "reproduce":
        only = [s.strip() for s in a.only.split(",")] if a.only else None
        reproduce(a.profile, a.run_dir, only=only, force=a.force, seed=a.seed, data=a.data, backbone=a.backbone,
                  val_fraction=a.val_fraction)
    elif a.cmd == "build-benchmark":
        bm = build_benchmark(get_profile(a.profile, seed=a.seed), a.run_dir or default_run_dir(a.profile), force=a.force)
        print(counts_table(bm.manifest).to_string(index=False))
        print(f"manifest: {bm.manifest_path}")
    elif a.cmd == "pretrain":
        only = [s.strip() for s in a.only.split(",")] if a.only else None
        for name, path in zoo.pretrain(get_profile("default"), only, force=a.force).items():
            print(f"{name}: {path} {zoo.card(path)['quality']}")
    elif a.cmd == "train":
        return _train(a)
    elif a.cmd == "detect":
        return _detect(a)
    elif a.cmd == "evaluate":
        return _evaluate(a)
    elif a.cmd == "bench":
        import json

        if a.what == "real-architecture":
            if not a.out:
                ap.error("real-architecture needs --out")
            import pandas as pd

            rows = real_architecture_bench(a.out, a.widths, a.size or 256,
                                           [m for m in a.modules.split(",") if m], seed=a.seed, budget_mb=a.budget_mb)
            print(pd.DataFrame(rows).drop(columns="error", errors="ignore").to_string(index=False))
        elif a.what == "make-tree":
            if not a.out:
                ap.error("make-tree needs --out")
            print(json.dumps(bench.synthetic_tree(a.out, a.n_train, a.n_test, a.size or 512, a.seed), indent=2))
        elif a.what == "streaming":
            if not (a.checkpoint and a.data):
                ap.error("streaming needs --checkpoint and --data")
            import pandas as pd

            det = reload_detector(a.checkpoint)
            ds = _dataset_for(det, a.data).subset("test")
            print(pd.DataFrame(bench.streaming(det, ds, a.n, workers=a.workers)).to_string(index=False))
        elif a.what == "craft-cache":
            print(json.dumps(bench.craft_cache(_workbench(a), a.n_steps, a.k, modules=a.train.split(",")), indent=2))
        elif a.what == "craft-distance":
            import pandas as pd
            print(pd.DataFrame(bench.craft_distance(_workbench(a))).to_string(index=False))
        else:
            if not a.checkpoint:
                ap.error("craft-detect needs --checkpoint")
            import pandas as pd
            print(pd.DataFrame(bench.craft_detect(a.checkpoint, _workbench(a))).to_string(index=False))
    return 0


def _workbench(a):
    """The udet-mini workbench of a bench command's profile, run dir and seed."""
    return open_workbench(a.profile, run_dir=a.run_dir, seed=a.seed)


def _train(a) -> int:
    import json
    import os
    from pathlib import Path

    if a.mixed_precision:
        os.environ["ACCELERATE_MIXED_PRECISION"] = a.mixed_precision   # read by every Accelerator() of the fit
    try:
        p = with_settings(get_profile(a.profile, seed=a.seed), a.set)
    except ValueError as e:
        raise DataError("--set", str(e)) from None
    run_dir, out = Path(a.run_dir or default_run_dir(a.profile)), Path(a.out)
    cls, on_udet_mini = detector_class(a.detector), str(a.data) == EMBEDDED
    set_by_user = any(item.partition("=")[0].strip() == "data.resolution" for item in a.set or ())
    size, why = input_size(cls, p, on_udet_mini, set_by_user)
    ds = None   # opened here only when the images' sizes cap the input size
    if a.policy == "center-crop" and size != p.data.resolution and not (on_udet_mini or set_by_user):
        ds = open_dataset(a.data, size=size, policy=a.policy, p=p, run_dir=run_dir)
        size, why = input_size(cls, p, on_udet_mini, set_by_user, smallest_side=ds.smallest_side(progress=True))
    if size != p.data.resolution and not (on_udet_mini or set_by_user):   # the detector's own size: how to change it
        policy = "--policy resize or " if size < (cls.published_size or 0) else ""
        why += f"; {policy}--set data.resolution=N to change it"
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, resolution=size))
    if out.exists() and not out.is_dir():
        raise DataError("--out", f"{out} is a file; give a folder for the checkpoint")
    if a.force:
        _clear_run_folder(out)
    elif (out / "detector.json").is_file():
        kind = checkpoint_meta(out, "detector.json", "detector").get("name")
        if kind != a.detector:
            raise DataError(out, f"holds a {kind} checkpoint, not {a.detector}: choose another --out (or --force)")
    if a.policy == "native":
        raise DataError(a.data, "policy native scores images at their own sizes; training needs one input size "
                                "(center-crop or resize)")
    det = create_detector(a.detector, p, run_dir, a.backbone, weights_for(cls, p, run_dir, a.backbone))
    det.config()   # resolves and checks the backbone before any image is decoded
    ds = ds or open_dataset(a.data, size=p.data.resolution, policy=a.policy, p=p, run_dir=run_dir)
    ds.size = p.data.resolution   # (a data set opened above to read the images' sizes: now at the chosen size)
    where = ds.description["spec"]
    ds.manifest = prepare_splits(ds.manifest, where, a.val_fraction, a.seed)
    train, val = ds.subset("train"), ds.subset("val")
    settings = {"detector": a.detector, "profile": config_dict(p), "seed": a.seed, "data": str(where),
                "policy": a.policy, "val_fraction": a.val_fraction, "rows": _rows_key(ds.manifest),
                "config": json.loads(json.dumps(det.config(), default=str))}
    # every process reads --out; only the first (RANK 0 under torchrun / accelerate launch) records the settings
    # (no process group exists yet: creating accelerate's state here would fix it before the Accelerator's options)
    if _check_run_folder(out, settings, first=os.environ.get("RANK", "0") == "0") == "done":
        print(f"{out} already holds this {a.detector} checkpoint, trained with these settings (--force retrains it)")
        return 0
    _check_readable_classes(val, where, a.workers)   # before training: its threshold is calibrated on these
    steps = getattr(det.cfg, "steps", None) or getattr(getattr(det.cfg, "classifier", None), "steps", None)
    print(f"training {a.detector} at {p.data.resolution} px ({why}), policy {a.policy}, "
          f"{f'{steps} steps, ' if steps else ''}on {len(train)} train rows, threshold from {len(val)} validation rows "
          f"-> {out}")
    det = fit_detector(det, train, val, seed=a.seed, out=out, progress=True, workers=a.workers,
                       extra={"data": ds.provenance(), "n_train": len(train), "n_val": len(val)})
    if not _main_process():
        return 0
    from accelerate import PartialState
    print(f"{a.detector} trained by {PartialState().num_processes} process(es) on the {len(train)} train rows of "
          f"{where}; threshold {det.threshold:.4g} from its {len(val)} validation rows -> {out} "
          "(files that could not be read were reported above and skipped)")
    return 0


def _check_readable_classes(val, where, workers: int) -> None:
    """`DataError` before any training when the validation rows that can be read lack a class: calibration needs
    real and fake images (one reading pass over the validation split)."""
    labels, problems = readable_labels(val, num_workers=workers, progress=True)
    n_real, n_fake = int((labels == REAL).sum()), int((labels == FAKE).sum())
    if not n_real or not n_fake:
        raise DataError(where, f"its validation split has {n_real} readable real and {n_fake} readable fake images "
                               f"({len(problems)} unreadable, e.g. {problems[0][0] if problems else 'none'}); the "
                               "threshold is calibrated on both: nothing was trained")


RUN_FILE = "run.json"   # what determines a `train` run, written into --out before its first step


def _rows_key(manifest) -> str:
    """The training data's identity without reading every image: each row's path, label, split, size and mtime."""
    import hashlib
    import os
    h = hashlib.sha256()
    for path, label, split in zip(manifest["path"], manifest["label"], manifest["split"]):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{path}|{label}|{split}|{stamp}\n".encode())
    return h.hexdigest()[:16]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_run_folder(out, settings: dict, first: bool = True) -> str:
    """'new' (nothing there: `settings` recorded), 'resume' (an unfinished run with the same settings) or 'done'
    (finished with the same settings); a `DataError` (rc 2) when --out holds a run with other settings or from an
    unknown run, so a resumed checkpoint never mixes settings (weights trained under one, recorded under another)."""
    import json

    record = out / RUN_FILE
    ours = any((out / f).exists() for f in ("detector.json", "checkpoint", RUN_FILE))
    if not ours:
        if not first:   # the first process checks the folder and records the settings
            return "new"
        if out.is_dir() and any(out.iterdir()):
            raise DataError("--out", f"{out} is a folder with other files; give an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, settings)
        return "new"
    if not record.is_file():
        raise DataError("--out", f"{out} holds a checkpoint without {RUN_FILE} (from an older version or another "
                                 "tool): pass --force to start fresh there, or choose another --out")
    try:
        before = json.loads(record.read_text())
    except json.JSONDecodeError:
        raise DataError(record, "is not valid JSON: pass --force to start fresh, or choose another --out") from None
    if before != settings:
        a, b = _flat(before), _flat(settings)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise DataError("--out", f"{out} holds a {before.get('detector')} run with other settings (differing: "
                                 f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); resuming it would "
                                 "record these settings for weights trained under the others: pass --force to start "
                                 "fresh there, or choose another --out")
    return "done" if (out / "detector.json").is_file() else "resume"


def _clear_run_folder(out) -> None:
    """--force: remove a previous run from --out (only a folder this command wrote, or an empty one)."""
    import shutil

    if not out.exists():
        return
    if not any((out / f).exists() for f in ("detector.json", "checkpoint", RUN_FILE)) and any(out.iterdir()):
        raise DataError("--out", f"{out} holds files this command did not write; --force removes only its own runs")
    shutil.rmtree(out)


def _input_of(det, policy=None) -> tuple[str, int]:
    """(resolution policy, input size) a loaded detector scores with: `policy` or the one it was trained with."""
    import json
    from pathlib import Path
    trained = json.loads((Path(det.folder) / "detector.json").read_text()).get("data", {})
    return policy or trained.get("policy", "center-crop"), det.p.data.resolution


def _dataset_for(det, spec, policy=None):
    """The lazy data set a loaded detector scores, at its input size and policy (`_input_of`)."""
    policy, size = _input_of(det, policy)
    return open_dataset(spec, size=size, policy=policy, p=det.p, run_dir=default_run_dir(det.p.name))


def _detect(a) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    out = _output_file(a.out)
    paths, problems = [], []
    for p in a.paths:
        if not Path(p).exists():
            raise DataError(p, "does not exist: give image files or folders of images")
        if Path(p).is_dir():
            images, others = scan_folder(p)
            paths, problems = paths + images, problems + others
            if not images:
                problems.append((str(p), "no image files found in this folder"))
        else:
            paths.append(Path(p))
    if not paths:
        raise DataError(", ".join(map(str, a.paths)), "no image file to score ("
                        + "; ".join(f"{q}: {why}" for q, why in problems) + ")")
    det = reload_detector(a.checkpoint).uncached()
    if a.fast:
        if det.name != "craft":
            raise DataError(a.checkpoint, f"--fast is CRAFT-fast; this is a {det.name} checkpoint")
        det = det.fast_variant()
    policy, size = _input_of(det, a.policy)
    ds = ImageDataset(pd.DataFrame({"path": [str(q) for q in paths]}), size, policy)
    import time
    t0 = time.perf_counter()
    scores, bad = score_dataset(det, ds, batch_size=a.batch_size, num_workers=a.workers, progress=True)
    wall = time.perf_counter() - t0
    problems += bad
    if not _main_process():
        return 0
    ok = ~np.isnan(scores)
    df = pd.DataFrame({"path": ds.manifest["path"][ok], "score": scores[ok],
                       "label": np.where(scores[ok] >= det.threshold, "fake", "real"),
                       "detector": det.name + ("-fast" if a.fast else ""), "threshold": det.threshold})
    atomic_write_text(out, df.to_csv(index=False))
    bad_csv = out.with_suffix(".bad.csv")
    if problems:
        atomic_write_text(bad_csv, pd.DataFrame(problems, columns=["path", "problem"]).to_csv(index=False))
    else:
        bad_csv.unlink(missing_ok=True)   # an earlier run's list must not sit beside this run's scores
    print(f"scored {len(df)} images with {det.name}{' (CRAFT-fast, a different detector)' if a.fast else ''} "
          f"({len(ds) / max(wall, 1e-9):.1f} images/s, policy {policy} at {size} px) -> {a.out}")
    _report_bad(problems)
    return 0


def _output_file(path) -> "Path":
    """`--out` of a command that writes one file: checked before any work (not a folder, its folder writable)."""
    import os
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise DataError("--out", f"{out} is a folder; give the CSV file to write (e.g. {out / 'scores.csv'})")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise DataError("--out", f"{parent} is a file, not a folder to write {out.name} into")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise DataError("--out", f"cannot write into {parent}")
    return out


def _output_folder(path) -> "Path":
    """`--out` of a command that writes a folder of tables: checked before any work (not an existing file)."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DataError("--out", f"{out} is a file; give a folder for the tables")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _evaluate(a) -> int:
    out, timer = _output_folder(a.out), Timer()
    for folder in a.checkpoint:   # every checkpoint is checked before the first image is scored
        reload_detector(folder)
    with PeakRSS() as mem, timer("evaluate"):
        e = evaluate_checkpoints(a.checkpoint, lambda det: _dataset_for(det, a.data, a.policy),
                                 batch_size=a.batch_size, num_workers=a.workers, progress=True)
    if not _main_process():   # under accelerate launch / torchrun every process holds the gathered scores
        return 0
    prov = provenance(None, None, timer.timings, data=a.data, checkpoints=e.runs, peak_rss_mb=round(mem.peak_mb))
    write_table(e.comparison, out / "comparison", prov)
    write_table(e.per_family, out / "per_family", prov)
    e.scores.to_csv(out / "scores.csv", index=False)
    atomic_write_json(out / "provenance.json", prov)
    print(e.comparison.round(3).to_string(index=False))
    for r in e.runs:
        print(f"{r['detector']}: {r['n_scored']} test images scored, {r['images_per_s']} images/s, "
              f"{len(r['bad_files'])} bad file(s)")
        _report_bad([(b["path"], b["problem"]) for b in r["bad_files"]])
    print(f"tables -> {out}")
    return 0


def _main_process() -> bool:
    from accelerate import PartialState
    return PartialState().is_main_process


def _report_bad(problems) -> None:
    if problems:
        print(f"skipped {len(problems)} bad file(s):")
        for path, why in problems:
            print(f"  {path}: {why}")

