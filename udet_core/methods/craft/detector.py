"""CRAFT in the registry (`methods.base`): fitted on a data set's rows through `methods.craft.train.fit`, scored by
full-mode P(fake) (CRAFT-fast: `fast_variant`), saved as a complete CRAFT checkpoint."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch

from udet_core.core.keys import content_key
from udet_core.data.images import to_tensor
from udet_core.engine.distances import resolved_name
from udet_core.engine.metrics import calibrate_threshold
from udet_core.methods.base import Detector, register
from udet_core.methods.craft.model import Craft, CraftScores
from udet_core.methods.craft.train import cache_dir, fit, prefix_cache, selection_info


@register("craft")
class CraftDetector(Detector):
    """CRAFT in the common protocol: fine-tuned on the given rows; full-mode P(fake) as the score. The saved
    folder is a complete CRAFT checkpoint (full- and fast-mode thresholds), usable by `detect`."""

    config_section = "craft"
    published_size = 256   # DiffusionForensics' 256 px images, on which the CRAFT paper reports

    takes_backbone = "a StableDiffusionImageVariationPipeline folder"
    weights_needed = ("image_variation",)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self.model, self.fast = None, False

    def config(self):
        return {"craft": asdict(self.cfg), "distance": resolved_name(self.cfg.distance),
                "backbone": content_key(self.single_backbone())}

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        torch.manual_seed(seed)
        self.model = Craft.from_backbone(self.single_backbone(), self.cfg)
        val_images, val_df, problems = val.load(progress=progress, num_workers=workers)   # held for early stopping
        val = (val_images, val_df["label"].to_numpy())
        result = fit(self.model, train, seed=seed, out_dir=out_dir, progress=progress, val=val, workers=workers,
                     cache_dir=cache_dir(self.run_dir))
        self.history, problems = result.history, problems + result.problems
        self.bad_files += [{"path": str(path), "problem": why} for path, why in problems]
        self.model.eval()
        info = selection_info(self.history)
        self.chosen_step = info["chosen_step"]
        return info

    def _scores(self, images, fast=False, progress=False) -> CraftScores:
        """P(fake) and the distance d; the frozen prefix of these images is cached (shared by seeds and by variants
        that agree on it)."""
        x = to_tensor(images)   # at the input size the data set's resolution policy gave them
        z = prefix_cache(self.model, x, self.cfg.eval_batch_size, fast, progress,
                         cache_dir=cache_dir(self.run_dir) if self.use_cache else None)
        return self.model.score(x, fast, self.cfg.eval_batch_size, progress, z=z)

    def raw_signal(self, images, *, progress=False):
        """The reconstruction distance d that P(fake) is a monotone function of (`DistanceClassifier`)."""
        return self._scores(images, fast=self.fast, progress=progress).distance

    def score(self, images, *, progress=False):
        """P(fake) of full-mode CRAFT (with `fast`: CRAFT-fast, a different detector with its own threshold)."""
        return self._scores(images, fast=self.fast, progress=progress).p_fake

    def fast_variant(self) -> "CraftDetector":
        """CRAFT-fast (`FAST_MODE`), a different detector sharing this one's weights: scores in fast mode, at its own
        validation threshold. A new object; this detector is left as it is."""
        fast = copy.copy(self)
        fast.fast, fast.threshold = True, self.threshold_fast
        return fast

    def calibrate(self, val, *, progress=False, workers=0):
        super().calibrate(val, progress=progress, workers=workers)
        self.fast = True
        try:
            fast, labels = self.validation_scores(val, progress=progress, workers=workers)
        finally:
            self.fast = False
        self.model.threshold, self.threshold_fast = self.threshold, calibrate_threshold(fast, labels)

    def save(self, folder):
        self.model.save(folder, {"threshold_fast": self.threshold_fast, "history": self.history})

    @classmethod
    def load(cls, folder, p, run_dir):
        det = cls(p, run_dir)
        det.model = Craft.load(folder)
        det.cfg, det.threshold_fast = det.model.cfg, det.model.threshold_fast
        det.history = json.loads((Path(folder) / "craft.json").read_text()).get("history", [])
        det.chosen_step = selection_info(det.history)["chosen_step"]
        return det
