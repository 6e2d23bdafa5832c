"""Command line: `python -m udet_core reproduce|build-benchmark|train-craft|detect|bench ...` (see --help)."""
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udet_core", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("reproduce", help="execute notebooks 00-05 with papermill (executed copies in the run dir)")
    _run_args(r)
    r.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 00,03")

    _run_args(sub.add_parser("build-benchmark", help="build (or reuse) the embedded benchmark udet-mini only"))

    pt = sub.add_parser("pretrain", help="train the pretrained zoo (data/zoo/<name>: safetensors + model card); "
                        "resumable, hours on CPU")
    pt.add_argument("--only", default=None, help="comma-separated zoo models (default: all, dependencies first)")
    pt.add_argument("--force", action="store_true", help="retrain even when a verified model exists")

    d = sub.add_parser("detect", help="score images with a CRAFT checkpoint; writes one CSV row per image")
    d.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    d.add_argument("--checkpoint", required=True, help="CRAFT checkpoint folder (craft.json + pipeline/)")
    d.add_argument("--out", required=True, help="CSV to write: path, score, label, distance")
    d.add_argument("--fast", action="store_true", help="CRAFT-fast: invert only through the fine-tuned segment (a "
                   "different detector: its suffix was trained on full-mode inputs; own validation threshold)")
    d.add_argument("--batch-size", type=int, default=64)

    t = sub.add_parser("train-craft", help="train CRAFT on udet-mini (works under `accelerate launch`)")
    _run_args(t)
    t.add_argument("--name", default="craft", help="artifact name (folder prefix in the run dir)")

    be = sub.add_parser("bench", help="performance benchmarks")
    be.add_argument("what", choices=["craft-cache", "craft-detect", "craft-distance"])
    _run_args(be, force=False)
    be.add_argument("--n-steps", type=int, default=50)
    be.add_argument("--k", type=int, default=15)
    be.add_argument("--checkpoint", default=None, help="for craft-detect: a CRAFT checkpoint folder")
    be.add_argument("--train", default="encoder,unet,decoder", help="for craft-cache: modules that train")

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
        reproduce(a.profile, a.run_dir, only=only, force=a.force, seed=a.seed)
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
    elif a.cmd == "detect":
        return _detect(a)
    elif a.cmd == "train-craft":
        from .craft import run_craft
        from .profiles import get_profile
        from .runner import default_run_dir
        from accelerate import PartialState
        path = run_craft(get_profile(a.profile, seed=a.seed), a.run_dir or default_run_dir(a.profile), name=a.name,
                         force=a.force)
        print(f"CRAFT checkpoint: {path} (trained by {PartialState().num_processes} processes)")
    elif a.cmd == "bench":
        import json
        from . import bench
        from .profiles import get_profile
        from .runner import default_run_dir
        p, run_dir = get_profile(a.profile, seed=a.seed), a.run_dir or default_run_dir(a.profile)
        if a.what == "craft-cache":
            print(json.dumps(bench.craft_cache(p, run_dir, a.n_steps, a.k, modules=a.train.split(",")), indent=2))
        elif a.what == "craft-distance":
            import pandas as pd
            print(pd.DataFrame(bench.craft_distance(p, run_dir)).to_string(index=False))
        else:
            if not a.checkpoint:
                ap.error("craft-detect needs --checkpoint")
            import pandas as pd
            print(pd.DataFrame(bench.craft_detect(a.checkpoint, p, run_dir)).to_string(index=False))
    return 0


def _detect(a) -> int:
    from pathlib import Path
    from .craft import Craft, detect_images
    from .data.images import DataError, list_images
    from .runs import atomic_write_text
    paths, problems = [], []
    for p in a.paths:
        try:
            paths += list_images(p) if Path(p).is_dir() else [Path(p)]
        except DataError as e:
            problems.append((e.path, e.problem))
    model = Craft.load(a.checkpoint)
    df, bad = detect_images(model, paths, fast=a.fast, batch_size=a.batch_size)
    problems += bad
    atomic_write_text(a.out, df.to_csv(index=False))
    print(f"scored {len(df)} images ({df.attrs.get('images_per_s', 0):.1f} images/s, "
          f"{'CRAFT-fast, a different detector' if a.fast else 'CRAFT, full mode'}) -> {a.out}")
    if problems:
        print(f"skipped {len(problems)} bad file(s):")
        for path, why in problems:
            print(f"  {path}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
