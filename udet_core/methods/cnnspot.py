"""CNNSpot-style baseline (Wang et al., CVPR 2020, "CNN-generated images are surprisingly easy to spot"):
a ResNet trained on pixels with Blur+JPEG augmentation. The network and its training loop are shared with
DIRE, which trains the same classifier on reconstruction-error images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from udet_core.core.profiles import ClassifierConfig
from udet_core.data import perturb
from udet_core.data.dataset import RowExamples
from udet_core.engine.train import Objective, balanced, fit, skipped_files
from udet_core.methods.base import Detector, register


class SmallResNet(nn.Module):
    """A ResNet for small images: 3x3 stem (no early downsampling, so pixel fingerprints survive), one
    torchvision BasicBlock per stage (stride 2 from the second stage on), global average pool, one logit."""

    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None if stride == 1 and c == w else nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False),
                                                                    nn.BatchNorm2d(w))
            layers.append(BasicBlock(c, w, stride, down))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x):
        return self.head(self.pooled(x)).squeeze(1)

    def pooled(self, x):
        """The penultimate layer: globally pooled features (B, widths[-1]), what the head reads."""
        return self.features(x).mean((2, 3))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def blur_jpeg_augment(example: tuple, rng: np.random.Generator, cfg: ClassifierConfig) -> tuple:
    """CNNSpot's Blur+JPEG augmentation of one training example (uint8 HWC image, label): blurred with probability
    `blur_prob` (sigma uniform in `blur_sigma`), then JPEG-compressed with probability `jpeg_prob` (quality uniform
    in `jpeg_quality`). `rng` is the draw's own generator (`train.Draws`), so the augmentation is the same for any
    number of processes or DataLoader workers, and on resume."""
    image, label = example
    u = rng.random(4).tolist()
    if u[0] >= cfg.blur_prob and u[2] >= cfg.jpeg_prob:
        return example
    out = image.numpy()
    if u[0] < cfg.blur_prob:
        out = perturb.gaussian_blur(out, cfg.blur_sigma[0] + u[1] * (cfg.blur_sigma[1] - cfg.blur_sigma[0]))
    if u[2] < cfg.jpeg_prob:
        lo, hi = cfg.jpeg_quality
        out = perturb.jpeg(out, int(round(lo + u[3] * (hi - lo))))
    return torch.from_numpy(np.ascontiguousarray(out)), label


def train_classifier(examples, labels: np.ndarray, cfg: ClassifierConfig, *, seed: int, out_dir=None,
                     progress: bool = False, desc: str = "classifier", num_workers: int = 0
                     ) -> tuple[SmallResNet, list[dict]]:
    """Binary cross-entropy training of a SmallResNet with `train.fit` on a data set of (uint8 HWC image, label)
    examples (e.g. `data.dataset.RowExamples`, streamed by `num_workers` workers), drawing both classes equally often
    (`labels`: the examples' labels, known without reading the images)."""
    from functools import partial

    torch.manual_seed(seed)
    net = SmallResNet(cfg.widths)
    loss_fn = nn.BCEWithLogitsLoss()

    def loss(mods, batch):
        xb, yb = batch
        return loss_fn(mods["net"](to_input(xb)), yb.float())

    augment = partial(blur_jpeg_augment, cfg=cfg) if cfg.blur_prob > 0 or cfg.jpeg_prob > 0 else None
    history = fit({"net": net}, [Objective("bce", loss, [{"params": list(net.parameters())}], lr=cfg.lr)],
                  examples, steps=cfg.steps, batch_size=cfg.batch_size, seed=seed, out_dir=out_dir,
                  rows=balanced(torch.tensor(np.asarray(labels))).numpy(), transform=augment,
                  num_workers=num_workers, checkpoint_every=max(50, cfg.steps // 4), desc=desc, progress=progress)
    return net.eval(), history


@torch.no_grad()
def classifier_scores(net: SmallResNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(fake) for uint8 NHWC images."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return torch.cat([torch.sigmoid(net(to_input(b))) for b in x.split(batch_size)]).numpy()


@torch.no_grad()
def classifier_features(net: SmallResNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features (N, widths[-1]) of uint8 NHWC images: a texture-sensitive feature space."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return torch.cat([net.pooled(to_input(b)) for b in x.split(batch_size)]).numpy()


def save_classifier(net: SmallResNet, folder) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(folder) / "classifier.safetensors"))


def load_classifier(folder, widths) -> SmallResNet:
    from safetensors.torch import load_file
    net = SmallResNet(widths)
    net.load_state_dict(load_file(str(Path(folder) / "classifier.safetensors")))
    return net.eval()


@register("cnnspot")
class CNNSpot(Detector):
    """ResNet on pixels, Blur+JPEG augmentation (CNNSpot-style; small ResNet for the profile's resolution)."""

    config_section = "cnnspot"
    published_size = 224   # its 224 px training crops (Wang et al. 2020)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self.net = None

    def config(self):
        return self.cfg

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        labels = train.manifest["label"].to_numpy()
        self.net, history = train_classifier(RowExamples(train, torch.tensor(labels)), labels, self.cfg,
                                             seed=seed, out_dir=out_dir, progress=progress, desc="CNNSpot",
                                             num_workers=workers)
        self.bad_files += skipped_files(history)
        return {"final_bce": history[-1]["bce"] if history else None, "bce_per_step": [h["bce"] for h in history]}

    def score(self, images, *, progress=False):
        return classifier_scores(self.net, images)

    def features(self, images) -> np.ndarray:
        """The classifier's penultimate-layer features (`classifier_features`)."""
        return classifier_features(self.net, images)

    def save(self, folder):
        save_classifier(self.net, folder)

    @classmethod
    def load(cls, folder, p, run_dir):
        det = cls(p, run_dir)
        det.net = load_classifier(folder, det.cfg.widths)
        return det
