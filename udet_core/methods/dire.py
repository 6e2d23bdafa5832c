"""DIRE (Wang et al., ICCV 2023, "DIRE for diffusion-generated image detection"): invert an image with DDIM,
reconstruct it with DDIM, and classify the DIffusion Reconstruction Error image |x - x_hat| with a ResNet.

Official code: ADM on ImageNet/LSUN, 20 + 20 DDIM steps, DIRE images saved as 8-bit PNG, ResNet-50. Here the
diffusion model is the benchmark's Stable Diffusion Image Variation stand-in (latent DDIM conditioned on the
image's CLIP embedding, as CRAFT uses), and the classifier is the small ResNet shared with CNNSpot.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from udet_core.core.io import atomic_write_bytes
from udet_core.core.keys import array_key, content_key
from udet_core.core.profiles import config_hash
from udet_core.core.progress import tqdm
from udet_core.data.images import to_tensor
from udet_core.methods.base import Detector, register
from udet_core.methods.cnnspot import (
    classifier_scores,
    load_classifier,
    save_classifier,
    train_classifier,
)
from udet_core.models.backbones import load_image_variation
from udet_core.models.sampling import ddim_roundtrip


def dire_image(x: torch.Tensor, x_hat: torch.Tensor) -> np.ndarray:
    """DIRE(x) = |x - x_hat| in 8-bit pixel units (uint8 NHWC), the reconstruction clamped to the image range first,
    as the official code does."""
    d = ((x - x_hat.clamp(-1, 1)).abs() * 127.5).round().clamp(0, 255).to(torch.uint8)
    return d.permute(0, 2, 3, 1).numpy()


class StoredDire(torch.utils.data.Dataset):
    """The DIRE images of a data set's readable rows, stored on disk as one uint8 array (`.npy`, memory-mapped as
    the official code stores DIRE PNGs): examples (DIRE image (S, S, 3), label) for the classifier's training."""

    def __init__(self, path, rows: np.ndarray, labels: np.ndarray):
        self.path, self.rows, self.labels, self._mm = Path(path), rows, torch.tensor(labels[rows]), None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if self._mm is None:   # opened in each DataLoader worker
            self._mm = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._mm[i])), self.labels[i]


@register("dire")
class Dire(Detector):
    """DDIM reconstruction error + ResNet. Reconstructions are cached per image content (shared by seeds)."""

    config_section = "dire"
    published_size = 256   # ADM at 256 px on DiffusionForensics (DIRE, Wang et al. 2023)

    takes_backbone = "a diffusers image-variation pipeline folder (DDIM inversion + reconstruction)"
    weights_needed = ("image_variation",)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self.net, self._diffusion = None, None

    def config(self):
        return {"dire": asdict(self.cfg), "backbone": content_key(self.single_backbone())}


    def diffusion(self):
        """The frozen image-variation backbone whose DDIM round trip makes the DIRE images (loaded once)."""
        if self._diffusion is None:
            self._diffusion = load_image_variation(self.single_backbone())
            for m in (self._diffusion.vae, self._diffusion.image_encoder, self._diffusion.unet):
                m.eval().requires_grad_(False)
        return self._diffusion

    def dire_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """DIRE images of uint8 images, read from / written to a cache file keyed by the images' bytes, the
        backbone's content and the step count."""
        from safetensors.torch import load_file, save

        bb = self.diffusion()
        key = config_hash("clamped", array_key(images), content_key(self.single_backbone()), self.cfg.n_steps)
        cache = self.run_dir / "artifacts" / "dire-cache" / f"{key}.safetensors"
        if self.use_cache and cache.is_file():
            return load_file(str(cache))["dire"].numpy()
        x = to_tensor(images)   # at the input size the data set's resolution policy gave them
        out = np.concatenate([dire_image(b, ddim_roundtrip(bb, b, self.cfg.n_steps))
                              for b in tqdm(x.split(self.cfg.batch_size), desc="DIRE reconstructions",
                                            disable=not progress)])
        if self.use_cache:
            atomic_write_bytes(cache, save({"dire": torch.from_numpy(np.ascontiguousarray(out))}))
        return out

    def stored_dire_images(self, ds, path: Path, progress: bool = False, workers: int = 0) -> StoredDire:
        """The DIRE images of every readable row of the lazy data set `ds`, made batch by batch through DataLoader
        workers (each batch's reconstructions cached by content, as `dire_images`) and written to `path`; the files
        that could not be read are added to `bad_files` and left out."""
        from numpy.lib.format import open_memmap
        out, rows = None, []
        for b in tqdm(ds.loader(self.cfg.batch_size, workers), desc="DIRE images", disable=not progress):
            self.bad_files += [{"path": str(q), "problem": why} for q, why in b.problems]
            if len(b.index):
                d = self.dire_images(b.images.numpy())
                out = open_memmap(path, "w+", np.uint8, (len(ds), *d.shape[1:])) if out is None else out
                out[len(rows):len(rows) + len(d)] = d
                rows += b.index.tolist()
        if out is None:
            raise ValueError(f"DIRE: no training image of {ds.description.get('spec', 'the data set')} could be read")
        out.flush()
        return StoredDire(path, np.asarray(rows), ds.manifest["label"].to_numpy())

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        examples = self.stored_dire_images(train, Path(out_dir) / "dire-train.npy", progress, workers)
        labels = train.manifest["label"].to_numpy()[examples.rows]
        self.net, history = train_classifier(examples, labels, self.cfg.classifier, seed=seed, out_dir=out_dir,
                                             progress=progress, desc="DIRE classifier", num_workers=workers)
        examples.path.unlink()   # remade from the per-batch reconstruction caches if a rerun needs it
        return {"final_bce": history[-1]["bce"] if history else None, "bce_per_step": [h["bce"] for h in history]}

    def score(self, images, *, progress=False):
        return classifier_scores(self.net, self.dire_images(images, progress))

    def save(self, folder):
        save_classifier(self.net, Path(folder))

    @classmethod
    def load(cls, folder, p, run_dir):
        det = cls(p, run_dir)
        det.net = load_classifier(folder, det.cfg.classifier.widths)
        return det
