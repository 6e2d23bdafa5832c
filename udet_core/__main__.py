"""Command line: `python -m udet_core reproduce|benchmark ...` (see --help)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udet_core", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("reproduce", help="execute notebooks 00-05 with papermill (executed copies in the run dir)")
    r.add_argument("--profile", default="default", choices=["tiny", "default", "paper"])
    r.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    r.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 00,03")
    r.add_argument("--force", action="store_true", help="rebuild cached artifacts instead of reusing them")
    r.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("build-benchmark", help="build (or reuse) the embedded benchmark udet-mini only")
    b.add_argument("--profile", default="default", choices=["tiny", "default", "paper"])
    b.add_argument("--run-dir", default=None)
    b.add_argument("--force", action="store_true")
    b.add_argument("--seed", type=int, default=0)

    a = ap.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
