"""Command line: `python -m udet_core reproduce|build-benchmark|pretrain|train|detect|evaluate|bench ...` (see --help
on each)."""
from __future__ import annotations

import argparse
import sys


from .profiles import PROFILES


def _run_args(parser, force: bool = True) -> None:
    """The arguments every command on udet-mini shares: profile, run dir, seed (and --force)."""
    parser.add_argument("--profile", default="default", choices=list(PROFILES))
    parser.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    parser.add_argument("--seed", type=int, default=0)
    if force:
        parser.add_argument("--force", action="store_true", help="rebuild cached artifacts instead of reusing them")


DETECTOR_NAMES = ("craft", "dire", "aeroblade", "cnnspot", "unigendet")
DATA_HELP = ("data set: 'udet-mini' (the embedded synthetic stand-in), a manifest CSV, a FakeClue JSON, or a folder in "
             "DiffusionForensics, GenImage or 0_real/1_fake layout")


def _data_args(parser, policy_default: str | None = "center-crop") -> None:
    """How images are read: resolution policy, batch size, loader workers."""
    from .data.dataset import POLICIES
    parser.add_argument("--policy", choices=list(POLICIES), default=policy_default,
                        help="resolution policy: " + "; ".join(f"{k}: {v}" for k, v in POLICIES.items())
                        + ("" if policy_default else " (default: the one the checkpoint was trained with)"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes decoding images")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udet_core", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("reproduce", help="execute notebooks 00-05 with papermill (executed copies in the run dir)")
    _run_args(r)
    r.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 00,03")
    r.add_argument("--data", default="udet-mini", help="data-set spec the notebooks run on: udet-mini (default), a "
                   "manifest .csv, a FakeClue .json, or a DiffusionForensics / GenImage / 0_real/1_fake folder "
                   "(held in memory at the profile's input size; larger sets: train / evaluate)")
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
    tr.add_argument("detector", choices=DETECTOR_NAMES)
    tr.add_argument("--data", default="udet-mini", help=DATA_HELP)
    tr.add_argument("--out", required=True, help="checkpoint folder to write (a rerun resumes an interrupted fit)")
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
    from .data.images import DataError
    try:
        return _run(ap, a)
    except DataError as e:   # bad input, a missing or corrupt zoo model, ...: one message naming it, no traceback
        print(f"udet {a.cmd}: {e}", file=sys.stderr)
        return 2


def _run(ap, a) -> int:
    if a.cmd == "reproduce":
        from .runner import reproduce
        only = [s.strip() for s in a.only.split(",")] if a.only else None
        reproduce(a.profile, a.run_dir, only=only, force=a.force, seed=a.seed, data=a.data, backbone=a.backbone,
                  val_fraction=a.val_fraction)
    elif a.cmd == "build-benchmark":
        from .benchmark import build_benchmark, counts_table
        from .profiles import get_profile
        from .runner import default_run_dir
        bm = build_benchmark(get_profile(a.profile, seed=a.seed), a.run_dir or default_run_dir(a.profile), force=a.force)
        print(counts_table(bm.manifest).to_string(index=False))
        print(f"manifest: {bm.manifest_path}")
    elif a.cmd == "pretrain":
        from . import zoo
        from .profiles import get_profile
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
        from . import bench
        if a.what == "real-architecture":
            if not a.out:
                ap.error("real-architecture needs --out")
            from .models.real_architecture import real_architecture_bench
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
            from .detectors import load_detector
            det = load_detector(a.checkpoint)
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
    from .workbench import open_workbench
    return open_workbench(a.profile, run_dir=a.run_dir, seed=a.seed)


def _train(a) -> int:
    from pathlib import Path
    from .data.dataset import check_split, open_dataset, split_validation
    from .data.images import DataError
    from .detectors import detector_class, fit_detector
    from .profiles import get_profile
    from .runner import default_run_dir
    from .runs import checkpoint_meta
    from .profiles import with_settings
    if a.mixed_precision:
        import os
        os.environ["ACCELERATE_MIXED_PRECISION"] = a.mixed_precision   # read by every Accelerator() of the fit
    try:
        p = with_settings(get_profile(a.profile, seed=a.seed), a.set)
    except ValueError as e:
        raise DataError("--set", str(e)) from None
    run_dir, out = Path(a.run_dir or default_run_dir(a.profile)), Path(a.out)
    if (out / "detector.json").is_file():
        kind = checkpoint_meta(out, "detector.json", "detector")["name"]
        if kind != a.detector:
            raise DataError(out, f"holds a {kind} checkpoint, not {a.detector}: choose another --out")
        print(f"{out} already holds a trained {kind} checkpoint; remove it to retrain")
        return 0
    if a.policy == "native":
        raise DataError(a.data, "policy native scores images at their own sizes; training needs one input size "
                                "(center-crop or resize)")
    det = detector_class(a.detector)(p, run_dir, a.backbone)
    det.config()   # resolves and checks the backbone before any data is read
    ds = open_dataset(a.data, size=p.data.resolution, policy=a.policy, p=p, run_dir=run_dir)
    where = ds.description["spec"]
    if a.val_fraction:
        ds.manifest = split_validation(ds.manifest, a.val_fraction, a.seed)
    check_split(ds.manifest, "train", where)
    if not (ds.manifest["split"] == "val").any():
        raise DataError(where, "has no 'val' split to calibrate the threshold on: pass --val-fraction F to carve one "
                               "from train (never from test)")
    check_split(ds.manifest, "val", where)
    train, val = ds.subset("train"), ds.subset("val")
    det = fit_detector(det, train, val, seed=a.seed, out=out, progress=True, workers=a.workers,
                       extra={"data": ds.provenance(), "n_train": len(train), "n_val": len(val)})
    if not _main_process():
        return 0
    from accelerate import PartialState
    print(f"{a.detector} trained by {PartialState().num_processes} process(es) on the {len(train)} train rows of "
          f"{where}; threshold {det.threshold:.4g} from its {len(val)} validation rows -> {out} "
          "(files that could not be read were reported above and skipped)")
    return 0


def _input_of(det, policy=None) -> tuple[str, int]:
    """(resolution policy, input size) a loaded detector scores with: `policy` or the one it was trained with."""
    import json
    from pathlib import Path
    trained = json.loads((Path(det.folder) / "detector.json").read_text()).get("data", {})
    return policy or trained.get("policy", "center-crop"), det.p.data.resolution


def _dataset_for(det, spec, policy=None):
    """The lazy data set a loaded detector scores, at its input size and policy (`_input_of`)."""
    from .data.dataset import open_dataset
    policy, size = _input_of(det, policy)
    return open_dataset(spec, size=size, policy=policy, p=det.p)


def _detect(a) -> int:
    from pathlib import Path
    import numpy as np
    import pandas as pd
    from .data.dataset import ImageDataset
    from .data.images import DataError, list_images
    from .detectors import load_detector, score_dataset
    from .runs import atomic_write_text
    paths, problems = [], []
    for p in a.paths:
        try:
            paths += list_images(p) if Path(p).is_dir() else [Path(p)]
        except DataError as e:
            problems.append((e.path, e.problem))
    det = load_detector(a.checkpoint)
    det.use_cache = False
    if a.fast:
        if det.name != "craft":
            raise DataError(a.checkpoint, f"--fast is CRAFT-fast; this is a {det.name} checkpoint")
        det.fast, det.threshold = True, det.threshold_fast
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
    atomic_write_text(a.out, df.to_csv(index=False))
    if problems:
        atomic_write_text(Path(a.out).with_suffix(".bad.csv"),
                          pd.DataFrame(problems, columns=["path", "problem"]).to_csv(index=False))
    print(f"scored {len(df)} images with {det.name}{' (CRAFT-fast, a different detector)' if a.fast else ''} "
          f"({len(ds) / max(wall, 1e-9):.1f} images/s, policy {policy} at {size} px) -> {a.out}")
    _report_bad(problems)
    return 0


def _evaluate(a) -> int:
    from pathlib import Path
    from .evaluation import evaluate_checkpoints
    from .runs import PeakRSS, Timer, atomic_write_json, provenance, write_table
    out, timer = Path(a.out), Timer()
    with PeakRSS() as mem, timer("evaluate"):
        comp, fam, scores, runs = evaluate_checkpoints(a.checkpoint, lambda det: _dataset_for(det, a.data, a.policy),
                                                       batch_size=a.batch_size, num_workers=a.workers, progress=True)
    if not _main_process():   # under accelerate launch / torchrun every process holds the gathered scores
        return 0
    prov = provenance(None, None, timer.timings, data=a.data, checkpoints=runs, peak_rss_mb=round(mem.peak_mb))
    write_table(comp, out / "comparison", prov)
    write_table(fam, out / "per_family", prov)
    scores.to_csv(out / "scores.csv", index=False)
    atomic_write_json(out / "provenance.json", prov)
    print(comp.round(3).to_string(index=False))
    for r in runs:
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


if __name__ == "__main__":
    sys.exit(main())
