"""udet-mini: schema, splits, roles, provenance, caching and per-image reproducibility."""
import json

import numpy as np
import pytest

from udet_core.data.images import load_rgb
from udet_core.data.manifest import COLUMNS, load_images
from udet_core.data.sources import PHOTOS, check_split_photos
from udet_core.models.realesrgan import weights_sha256
from udet_core.world.benchmark import (
    CONDITIONAL,
    build_benchmark,
    counts_table,
    load_generators,
    sample_family,
)


def test_manifest_schema_and_counts(tiny_run, tiny):
    _, bench = tiny_run
    df = bench.manifest
    assert list(df.columns) == list(COLUMNS)
    counts = counts_table(df).set_index("family")
    for split, n in tiny.data.n_real.items():
        assert counts.loc["real", split] == n
    for fam in tiny.families.seen:
        for split, n in tiny.families.n_fake.items():
            assert counts.loc[fam, split] == n, (fam, split)
    for fam in tiny.families.held_out:
        assert counts.loc[fam, "test"] == tiny.families.n_fake["test"]
        assert counts.loc[fam, ["train", "val"]].sum() == 0


def test_labels_roles_and_texts_agree(tiny_run):
    df = tiny_run[1].manifest
    assert ((df.label == 0) == (df.family == "real")).all()
    assert ((df.label == 0) == (df.role == "real")).all()
    assert set(df[df.label == 1].role) == {"seen", "held_out"}
    verdict = df.explanation.str.split(".").str[0]
    assert (verdict == np.where(df.label == 1, "fake", "real")).all()
    assert (df.caption.str.len() > 0).all()


def test_no_source_photo_in_two_splits(tiny_run, tiny):
    df = tiny_run[1].manifest
    with_source = df[df.source != ""]
    per_source = with_source.groupby("source").split.nunique()
    assert (per_source == 1).all(), per_source[per_source > 1]
    for split, names in tiny.data.split_photos.items():
        assert set(with_source[with_source.split == split].source) <= set(names)
    # conditional fakes are made from their split's photos; domains follow
    assert set(df[(df.family.isin(CONDITIONAL)) & (df.split == "test")].domain) == {"test"}
    assert set(df[(df.label == 0) & (df.split != "test")].domain) == {"train"}


def test_split_photo_overlap_is_refused():
    with pytest.raises(ValueError, match="both"):
        check_split_photos({"train": ("astronaut",), "test": ("astronaut",)})
    with pytest.raises(ValueError, match="unknown photo"):
        check_split_photos({"train": ("lena",)})
    assert all(p.licence for p in PHOTOS.values())


def test_images_load_at_profile_resolution(tiny_run, tiny):
    images, kept, problems = load_images(tiny_run[1].manifest)
    assert problems == [] and len(kept) == len(tiny_run[1].manifest)
    assert images.shape[1:] == (tiny.data.resolution, tiny.data.resolution, 3)


@pytest.mark.parametrize("family", ["gan", "ldm", "sdedit"])
def test_fake_regenerates_from_its_seed(tiny_run, tiny, family):
    """A stored fake is reproduced bit-exactly from the manifest's seed (and source crop)."""
    _, bench = tiny_run
    df = bench.manifest
    row = df[(df.family == family) & (df.split == "test")].iloc[0]
    models = load_generators(tiny, bench.generators)
    crops = None
    if family in CONDITIONAL:  # regenerate the same crop stream and take crop 0 (row 0 of the split)
        from udet_core.data.sources import random_crops
        from udet_core.world.benchmark import FAMILIES, SPLIT_ID
        from udet_core.world.trainers import stream_rng
        crops, _ = random_crops(tiny.data.split_photos["test"], 1, tiny.data.resolution, tiny.data.crop_scales,
                                stream_rng(tiny.seed, 10 + SPLIT_ID["test"], FAMILIES.index(family)))
    again = sample_family(family, models, tiny, [row.seed], crops)[0]
    assert np.abs(again.astype(int) - load_rgb(row.path).astype(int)).max() <= 1


def test_rebuild_reuses_cache(tiny_run, tiny):
    from dataclasses import replace
    run_dir, bench = tiny_run
    before = (bench.root / "done.json").stat().st_mtime_ns
    again = build_benchmark(tiny, run_dir, progress=False)
    assert again.root == bench.root and (again.root / "done.json").stat().st_mtime_ns == before
    # a detector's config is not part of the benchmark's key
    other = build_benchmark(replace(tiny, craft=replace(tiny.craft, lam=9.0)), run_dir, progress=False)
    assert other.root == bench.root


def test_artifacts_record_provenance(tiny_run):
    info = json.loads((tiny_run[1].root / "done.json").read_text())
    for key in ("code_version", "timings_s", "configs", "created"):
        assert key in info
    assert info["configs"][-2] == 0 and "resolution" in info["configs"][0]   # seed; data config
    assert info["configs"][-1]["realesrgan"] == weights_sha256()             # the external GAN's weights
    card = (tiny_run[1].root / "README.md").read_text()
    assert "synthetic" in card.lower() and "licence" in card
