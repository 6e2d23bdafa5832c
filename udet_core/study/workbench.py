"""The context a study runs in: one object holding the profile, the run directory, the data set and the backbones,
instead of `(p, run_dir, images, df)` passed to every function.

    wb = open_workbench("default")                                        # udet-mini, the stand-in backbones
    wb = open_workbench("default", data="/data/DiffusionForensics", backbone="/ckpt/sd-image-variations-diffusers")
    det = wb.fitted("craft")                                              # fitted on wb's train rows, cached
    wb.table(evaluation.comparison(wb).summary, "03_comparison", wb.p)       # CSV + Markdown + provenance JSON

Notebooks open one (their `data` and `backbone` papermill parameters), library functions take one. The data set is
held in memory at the profile's input size (the notebooks' scale); on data other than udet-mini each detector reads
it at its own input size (`wb.for_detector(name)`: the published one, as `train` does), so the studies fit and score
every detector on the images it was made for. Data sets larger than memory go through the streamed commands
(`train`, `evaluate`, `detect`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from udet_core.core.errors import DataError
from udet_core.core.io import write_table
from udet_core.core.paths import default_figures_dir, default_profile, default_run_dir
from udet_core.core.profiles import get_profile
from udet_core.core.provenance import Timer, provenance
from udet_core.data.dataset import ImageDataset, prepare_splits
from udet_core.data.manifest import SPLITS
from udet_core.data.sources import content_domain
from udet_core.methods.base import detector_class, fitted, input_size
from udet_core.study.viz import save_figure
from udet_core.world.benchmark import build_benchmark
from udet_core.world.specs import EMBEDDED, EMBEDDED_LABEL, open_dataset
from udet_core.world.weights import default_weights, weights_for


class NotApplicable(Exception):
    """Raised by a notebook whose analysis needs material its data set does not have (e.g. udet-mini's generated
    captions); `reproduce` records that notebook as skipped with this message and goes on."""


@dataclass
class Workbench:
    """Profile, run directory, data set (uint8 images + manifest rows), backbone, output folders and timings."""
    p: object                     # profiles.Profile
    run_dir: Path
    images: np.ndarray            # (n, S, S, 3) uint8 at the profile's input size, S = p.data.resolution
    df: pd.DataFrame              # their manifest rows, with `content`: the content domain cross-domain tests use
    data: dict                    # provenance of the data set: spec, layout, resolution policy, rows, bad files
    backbone: str | None = None   # a diffusers pipeline folder for CRAFT, DIRE and AEROBLADE (None: the stand-ins)
    figures_dir: Path | None = None
    seed: int = 0
    progress: bool = False
    timer: Timer = field(default_factory=Timer)
    source: ImageDataset | None = None   # what `images` were read from (None: udet-mini, held at one size)
    views: dict = field(default_factory=dict, repr=False)   # size -> this workbench read at that size (`at`)

    @property
    def embedded(self) -> bool:
        """Is the data set udet-mini (whose generators, captions and zoo the udet-mini-only analyses need)?"""
        return self.data.get("spec") == EMBEDDED

    @property
    def label(self) -> str:
        """How results and figure titles name the data set."""
        return EMBEDDED_LABEL if self.embedded else f"{Path(self.data['spec']).name} ({self.data['layout']})"

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results"

    def require_embedded(self, why: str) -> None:
        """`NotApplicable` (the notebook is skipped, with `why`) unless the data set is udet-mini."""
        if not self.embedded:
            raise NotApplicable(f"{why}; this run's data set is {self.label}")

    @property
    def has_explanations(self) -> bool:
        return bool((self.df["explanation"].fillna("") != "").all())

    def applicable(self, names) -> list[str]:
        """The detectors of `names` this data set can train (one that learns to explain needs reference
        explanations); the others are named once on the console."""
        keep = [n for n in names if self.has_explanations or not detector_class(n).needs_explanations]
        if len(keep) < len(names):
            print(f"left out on {self.label} (no reference explanations): {sorted(set(names) - set(keep))}")
        return keep

    def require_explanations(self, why: str) -> None:
        """`NotApplicable` unless every row has a reference explanation (udet-mini's templates, FakeClue's)."""
        missing = int((self.df["explanation"].fillna("") == "").sum())
        if missing:   # (`has_explanations` is false)
            raise NotApplicable(f"{why}: {missing} of {len(self.df)} images of {self.label} have no reference "
                                "explanation (udet-mini and FakeClue JSON have them; folder layouts do not)")

    def at(self, size: int) -> "Workbench":
        """This workbench with its images read again at `size` px (the same rows, in the same order, so masks of
        `df` still apply; cached), its profile's `data.resolution` set to `size`; itself at its own size or on
        udet-mini (held at one size). A row that cannot be read at `size` is a `DataError` naming it."""
        if self.source is None or size == self.p.data.resolution:
            return self
        if size not in self.views:
            ds = ImageDataset(self.df, size, self.source.policy, self.source.multiple, self.source.convert,
                              self.source.description)
            with self.timer(f"open_data_{size}px"):
                images, _, problems = ds.load(progress=self.progress)
            if problems:
                path, why = problems[0]
                raise DataError(path, f"readable at {self.p.data.resolution} px but not at {size} px ({why}; "
                                      f"{len(problems)} such file(s)): remove it from the data set")
            p = replace(self.p, data=replace(self.p.data, resolution=size))
            self.views[size] = replace(self, p=p, images=images, data={**self.data, "size": size}, views={})
        return self.views[size]

    def for_detector(self, name: str) -> "Workbench":
        """The workbench detector `name` reads: on udet-mini this one; on other data its images at the detector's
        input size (`methods.base.input_size`: its published size unless the profile keeps its own, under policy
        center-crop capped at what the smallest image holds; said once). The sizes are recorded in
        `data["input_px"]` (every table's provenance)."""
        if self.embedded or self.source is None:
            return self
        sizes = self.data.setdefault("input_px", {})
        if name not in sizes:
            if self.source.policy == "center-crop" and "smallest_side" not in self.data:
                self.data["smallest_side"] = ImageDataset(self.df, self.p.data.resolution).smallest_side(self.progress)
            size, why = input_size(detector_class(name), self.p, on_udet_mini=False, set_by_user=False,
                                   smallest_side=self.data.get("smallest_side"))
            if size != self.p.data.resolution:
                print(f"{name} reads {self.label} at {size} px ({why})")
            sizes[name] = size
        return self.at(sizes[name])

    def split(self, name: str) -> tuple[np.ndarray, pd.DataFrame]:
        """(images, manifest rows with a fresh index) of one split."""
        m = (self.df["split"] == name).to_numpy()
        return self.images[m], self.df[m].reset_index(drop=True)

    def fitted(self, name: str, *, p=None, seed: int | None = None, progress: bool | None = None, **kw):
        """The detector `name` fitted on this data set's train rows (threshold from its val rows), cached by
        content (`methods.base.fitted`); with this workbench's backbone if the detector takes one, else the
        stand-in weights it needs (`world.weights`); on other data than udet-mini at its input size (`for_detector`:
        `p`'s `data.resolution` is set to it)."""
        view = self.for_detector(name)
        if view is not self:
            p = p and replace(p, data=replace(p.data, resolution=view.p.data.resolution))
            return view.fitted(name, p=p, seed=seed, progress=progress, **kw)
        cls = detector_class(name)
        backbone = self.backbone if cls.takes_backbone else None
        return fitted(name, p or self.p, self.run_dir, self.images, self.df, backbone=backbone,
                      weights=weights_for(cls, self.p, self.run_dir, backbone),
                      seed=self.seed if seed is None else seed,
                      progress=self.progress if progress is None else progress, **kw)

    def backbone_folder(self) -> Path:
        """The SD Image Variation pipeline CRAFT and DIRE read here: the given backbone, else the stand-in."""
        return Path(self.backbone or default_weights(self.p, self.run_dir, ("image_variation",)).image_variation)

    def provenance(self, cfg=None, seeds=None, **extra) -> dict:
        """`core.provenance.provenance` with this data set and backbone recorded."""
        return provenance(cfg, seeds, self.timer.timings, data=self.label, data_provenance=self.data,
                          backbone=self.backbone or "the profile's stand-in", **extra)

    def table(self, df: pd.DataFrame, name: str, cfg=None, seeds=None, **extra) -> pd.DataFrame:
        """Write `df` to `results/<name>.csv/.md/.json` (provenance: `provenance(cfg, seeds, **extra)`); returns it."""
        write_table(df, self.results_dir / name, self.provenance(cfg, seeds, **extra))
        return df

    def figure(self, fig, name: str):
        """Save a figure as `<figures_dir>/<name>.png` and `.pdf` (`viz.save_figure`)."""
        return save_figure(fig, self.figures_dir / name)


def open_workbench(profile: str | None = None, *, data=EMBEDDED, backbone=None, run_dir=None, figures_dir=None,
                   seed: int = 0, progress: bool = False, policy: str = "center-crop",
                   val_fraction: float | None = None, rebuild: bool = False) -> Workbench:
    """The workbench of a profile on a data-set spec (`data.dataset`: udet-mini, a manifest CSV, a FakeClue JSON, or
    a DiffusionForensics / GenImage / `0_real/1_fake` folder), loaded at the profile's input size under `policy`.
    A data set without a `val` split needs `val_fraction` (carved from train by `data.dataset.prepare_splits`,
    never from test). Files that cannot be read are reported and skipped (recorded in `wb.data["bad_files"]`).
    `rebuild`: build udet-mini again even if a finished one exists. Outputs go to `runner.default_run_dir` and
    `runner.default_figures_dir` of the profile and data unless given."""
    profile = profile or default_profile()   # None: $UDET_PROFILE (nbval runs the notebooks on tiny), else default
    p, timer = get_profile(profile, seed=seed), Timer()
    run_dir = Path(run_dir or default_run_dir(profile, data))
    with timer("open_data"):
        readme = {}
        if str(data) == EMBEDDED:
            readme = {"readme": str(build_benchmark(p, run_dir, progress=progress, force=rebuild).root / "README.md")}
        ds = open_dataset(data, size=p.data.resolution, policy=policy, p=p, run_dir=run_dir)
        ds.manifest = prepare_splits(ds.manifest, ds.description["spec"], val_fraction, seed, SPLITS)
        images, df, problems = ds.load(progress=progress)
    prepare_splits(df, ds.description["spec"], splits=SPLITS)   # the rows that loaded still hold both classes
    # the content domain of each image: udet-mini's photo sources; elsewhere the manifest's domain (e.g. imagenet)
    content = [content_domain(s) for s in df["source"]] if str(data) == EMBEDDED else df["domain"].where(df["domain"] != "", None)
    bad = [{"path": str(q), "problem": why} for q, why in problems]
    info = {**ds.provenance(), **readme, **({"val_fraction": val_fraction} if val_fraction else {}), "bad_files": bad}
    return Workbench(p, run_dir, images, df.assign(content=content), info,
                     str(backbone) if backbone else None,
                     Path(figures_dir or default_figures_dir(profile, run_dir, data)), seed, progress, timer,
                     source=None if str(data) == EMBEDDED else ds)
