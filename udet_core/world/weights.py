"""The stand-in weights the methods start from, resolved by name: the verified zoo (`data/zoo`) on profiles with a
zoo, else the models the run directory trains for udet-mini. Methods never look weights up themselves; the study
and the command line hand them in (`methods.base.Weights`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from udet_core.core.errors import DataError
from udet_core.core.io import checkpoint_meta
from udet_core.core.profiles import PROFILES, Profile
from udet_core.methods.base import (
    WEIGHT_NAMES,
    Detector,
    Weights,
    checkpoint_profile,
    detector_class,
    load_detector,
)
from udet_core.methods.gduf import UniGenDet
from udet_core.world import zoo
from udet_core.world.benchmark import build_benchmark, train_generators


def standin_profile(p: Profile) -> Profile:
    """The profile stand-ins are looked up with: `p` at its named profile's resolution. A detector that reads other
    data at its own input size (`methods.base.input_size`) starts from the profile's stand-ins all the same: their
    VAEs and UNets are convolutional (any multiple of 8) and the unified model resizes to its own ViT input."""
    named = PROFILES[p.name]().data.resolution if p.name in PROFILES else p.data.resolution
    if p.data.resolution == named:
        return p
    return dataclasses.replace(p, data=dataclasses.replace(p.data, resolution=named))


def default_weights(p: Profile, run_dir, names=WEIGHT_NAMES) -> Weights:
    """The profile's stand-ins for the `Weights` fields `names`: the detectors' SD Image Variation backbone
    (`sdiv-<p.backbone>`), the benchmark's AutoencoderKL and, with a zoo, the pretrained unified model (GDUF
    fine-tunes it; without a zoo UniGenDet is built from scratch), at the profile's own resolution
    (`standin_profile`). Nothing is loaded or trained for `names=()`."""
    names = set(names)
    if not names:
        return Weights()
    p = standin_profile(p)
    gens = train_generators(p, run_dir, progress=False) if names & {"image_variation", "vae"} else None
    unified = zoo.path(p, "unified") / "unigendet" if p.zoo and "unified" in names else None
    return Weights(image_variation=str(gens.backbone_path) if gens and "image_variation" in names else None,
                   vae=str(gens.vae_path) if gens and "vae" in names else None,
                   unified=str(unified) if unified else None)


def weights_for(detector_cls, p: Profile, run_dir, backbone=None) -> Weights:
    """The stand-in weights a detector class reads (`weights_needed`), none when a `backbone` replaces them."""
    return default_weights(p, run_dir, () if backbone else detector_cls.weights_needed)


def candidate_backbones(p: Profile, run_dir) -> dict[str, Path]:
    """The SD Image Variation backbones a detector could start from, by name: the zoo's two stand-ins (pretrained on
    train-split photos / on every photo; `p.backbone` picks the detectors' default), else the benchmark's own."""
    if p.zoo:
        return {f"sdiv-{photos}": zoo.path(p, f"sdiv-{photos}") / "pipeline" for photos in ("train", "all")}
    return {"benchmark ldm generator": build_benchmark(p, run_dir, progress=False).generators.backbone_path}


def pretrained_model(p: Profile) -> UniGenDet | None:
    """The zoo's pretrained unified model before any GDUF (None when the profile trains from scratch)."""
    return UniGenDet.load(default_weights(p, None, ("unified",)).unified) if p.zoo else None


def reload_detector(folder) -> Detector:
    """`methods.base.load_detector` for a checkpoint whose recorded stand-in weights moved with the checkout: a
    recorded weight folder that is gone is replaced by the profile's verified zoo model (whose content key the
    checkpoint's config must still match); without a zoo, the missing folder is reported, never retrained."""
    folder = Path(folder)
    try:
        meta = checkpoint_meta(folder, "detector.json", "detector")
        recorded = Weights(**(meta.get("weights") or {}))
        p = checkpoint_profile(meta, detector_class(meta.get("name")))
    except (ValueError, TypeError, KeyError):   # (DataError is a ValueError)
        return load_detector(folder)   # it reports what is wrong with the checkpoint
    gone = [f.name for f in dataclasses.fields(recorded)
            if getattr(recorded, f.name) and not Path(getattr(recorded, f.name)).exists()]
    if not gone or not p.zoo:
        return load_detector(folder)
    try:
        found = default_weights(p, None, gone)
    except DataError:
        return load_detector(folder)
    return load_detector(folder, weights=dataclasses.replace(recorded, **{n: getattr(found, n) for n in gone}))
