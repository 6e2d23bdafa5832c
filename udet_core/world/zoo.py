"""The pretrained zoo: the stand-in models udet-mini starts from, as the papers start from Stable Diffusion and BAGEL.

`python -m udet_core pretrain [--only NAME]` trains each model (resumable: state is checkpointed under
`runs/pretrain/`), then writes it to `data/zoo/<name>/` as safetensors with `card.json` (config, data, steps, wall time,
loss curve, held-out quality, sha256 of every file) and a human-readable `MODEL_CARD.md`. The zoo is committed;
`path(p, name)` verifies a model's checksums and config before anything loads it.

Which photos a backbone has seen (paper setting: Stable Diffusion's pretraining covered the reals CRAFT is tested on):
`*-train` models see crops of the train-split photos only, `*-all` models crops of every bundled photo. The fake
generators (GAN, DDPM, the `ldm` and `aligned` families) are always `-train` models: a test photo never reaches them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_json, atomic_write_text
from udet_core.core.paths import WORK_DIR, ZOO_DIR
from udet_core.core.profiles import Profile, config_dict, config_hash
from udet_core.core.provenance import code_version
from udet_core.data.images import to_tensor, to_uint8
from udet_core.data.sources import PHOTOS, caption_for, random_crops
from udet_core.engine.metrics import frechet_distance, psnr
from udet_core.methods.gduf import UniGenDet, pretrain_unified
from udet_core.models.backbones import build_ddim, load_image_variation
from udet_core.models.featnet import load_featnet, save_featnet
from udet_core.models.gan import Generator
from udet_core.models.sampling import ddim_roundtrip, seeded_noise, vae_roundtrip
from udet_core.world.trainers import (
    train_featnet,
    train_gan,
    train_image_variation,
    train_pixel_ddpm,
    train_vae,
)

HELD_OUT = 256              # crops per quality measurement
ZOO_SEED = 0                # the zoo does not depend on a run's seed: every run of every seed starts from it


def photo_set(p: Profile, photos: str) -> tuple[str, ...]:
    """The photos a zoo model learns from: 'train' (train-split photos) or 'all' (every photo of every split)."""
    if photos == "train":
        return tuple(p.data.split_photos["train"])
    if photos == "all":
        return tuple(n for names in p.data.split_photos.values() for n in names)
    raise ValueError(f"unknown photo set {photos!r}; choose 'train' or 'all'")


def pool(p: Profile, photos: str, stream: int = 0) -> torch.Tensor:
    """Random multi-scale crops of the photo set, as [-1, 1] tensors (stream 0: training; 1: held out)."""
    crops, _ = random_crops(photo_set(p, photos), p.data.pretrain_pool, p.data.resolution, p.data.crop_scales,
                            np.random.default_rng([p.seed, 77, stream, len(photo_set(p, photos))]))
    return to_tensor(crops)


def held_out_reals(p: Profile, split: str, n: int = HELD_OUT) -> torch.Tensor:
    """Crops of one split's photos from their own random stream (the quality measurements' data). For a model
    trained on `train` photos, val and test crops come from unseen photos; for an `all` model (and `featnet`,
    `unified`) they are new crops of photos it has seen."""
    crops, _ = random_crops(p.data.split_photos[split], n, p.data.resolution, p.data.crop_scales,
                            np.random.default_rng([p.seed, 78, ("train", "val", "test").index(split)]))
    return to_tensor(crops)


# ---------------------------------------------------------------- entries

@dataclass(frozen=True)
class Entry:
    """One zoo model: what it is trained on, with which configs, and how it is built and measured."""
    name: str
    photos: str                                  # 'train' | 'all'
    configs: Callable[[Profile], tuple]          # the configs that determine it (its key)
    build: Callable[..., list]                   # (p, entry, work, out, deps, progress) -> history
    quality: Callable[..., dict]                 # (p, out, deps) -> held-out quality of the saved model
    needs: tuple[str, ...] = ()
    summary: str = ""


def _vae_build(p, e, work, out, deps, progress):
    vae, hist = train_vae(p, pool(p, e.photos), work, progress)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    return hist


def _vae_quality(p, out, deps):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    return {f"roundtrip_psnr_db_{s}": round(float(psnr(x, vae_roundtrip(vae, x)).mean()), 2)
            for s, x in ((s, held_out_reals(p, s)) for s in ("train", "val", "test"))}


def _sdiv_build(p, e, work, out, deps, progress):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(deps[f"vae-{e.photos}"] / "vae")
    iv, hist = train_image_variation(p, vae, pool(p, e.photos), work, progress)
    iv.save(out / "pipeline")
    return hist


def _sdiv_quality(p, out, deps):
    iv, n = load_image_variation(out / "pipeline"), p.craft.n_steps
    return {f"ddim{n}_roundtrip_psnr_db_{s}": round(float(psnr(x, ddim_roundtrip(iv, x, n)).mean()), 2)
            for s, x in ((s, held_out_reals(p, s, 128)) for s in ("train", "val", "test"))}


def _ddpm_build(p, e, work, out, deps, progress):
    from diffusers import DDPMPipeline

    unet, sched, hist = train_pixel_ddpm(p, pool(p, e.photos), work, progress)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out / "pipeline", safe_serialization=True)
    return hist


def _eps_quality(p, out, deps):
    """Held-out epsilon MSE of the pixel DDPM at 8 fixed timesteps (lower is better; 1.0 = predicting zero)."""
    import torch.nn.functional as F
    from diffusers import DDPMPipeline
    unet = DDPMPipeline.from_pretrained(out / "pipeline").unet.eval()
    sched = build_ddim(p.pixel.num_train_timesteps, latent=False)
    x = held_out_reals(p, "val", 128)
    g = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        for t in torch.linspace(0, p.pixel.num_train_timesteps - 1, 8).long():
            noise = torch.randn(x.shape, generator=g)
            tt = t.repeat(len(x))
            losses.append(F.mse_loss(unet(sched.add_noise(x, noise, tt), tt).sample, noise).item())
    return {"eps_mse_val": round(float(np.mean(losses)), 4)}


def _gan_build(p, e, work, out, deps, progress):
    from safetensors.torch import save_file

    G, hist = train_gan(p, pool(p, e.photos), work, progress)
    save_file(G.state_dict(), str(out / "generator.safetensors"))
    return hist


def _gan_quality(p, out, deps):
    """Fréchet distance (workbench feature net) of 512 samples to 512 held-out train-domain reals."""
    from safetensors.torch import load_file

    G = Generator(p.gan.nz, p.gan.ngf, p.data.resolution)
    G.load_state_dict(load_file(str(out / "generator.safetensors")))
    net = load_featnet(deps["featnet"])
    with torch.no_grad():
        fake = to_uint8(G.eval()(seeded_noise((p.gan.nz,), range(512))))
    real = to_uint8(held_out_reals(p, "train", 512))
    return {"frechet_featnet_train_domain": round(float(frechet_distance(net.features(real), net.features(fake))), 3)}


def _featnet_build(p, e, work, out, deps, progress):
    net, hist = train_featnet(p.data.resolution, p.geneval.featnet_steps, p.seed, out_dir=work, progress=progress,
                              feature_dim=p.geneval.feature_dim, n_crops=p.data.pretrain_pool)
    save_featnet(net, out)
    return hist


def _featnet_quality(p, out, deps):
    """Source-photo accuracy on held-out crops (chance: 1 / number of photos)."""
    net = load_featnet(out)
    names = sorted(PHOTOS)
    crops, meta = random_crops(names, 512, p.data.resolution, p.data.crop_scales, np.random.default_rng([p.seed, 79]))
    with torch.no_grad():
        pred = net(to_tensor(crops)).argmax(1).numpy()
    y = np.array([names.index(m["source"]) for m in meta])
    return {"source_accuracy": round(float((pred == y).mean()), 3), "chance": round(1 / len(names), 3)}


def captioned_crops(p: Profile, names, n: int, stream: int) -> tuple[np.ndarray, list[str]]:
    """Crops of the photos `names` with their template captions (the unified model's pretraining data)."""
    crops, meta = random_crops(names, n, p.data.resolution, p.data.crop_scales,
                               np.random.default_rng([p.seed, 80, stream]))
    return crops, [caption_for(m["source"], m["scale"]) for m in meta]


def _unified_build(p, e, work, out, deps, progress):
    from diffusers import AutoencoderKL

    crops, captions = captioned_crops(p, photo_set(p, e.photos), p.data.pretrain_pool // 2, 0)
    ug, hist = pretrain_unified(p.gduf, AutoencoderKL.from_pretrained(deps[f"vae-{e.photos}"] / "vae"), crops,
                                captions, resolution=p.data.resolution, seed=p.seed, out_dir=work, progress=progress)
    ug.save(out / "unigendet")
    return hist


def _unified_quality(p, out, deps):
    """Captioning LM loss and flow-matching loss on fresh crops of the validation photos (lower is better; the
    model pretrained on every photo has seen these photos, not these crops)."""
    ug = UniGenDet.load(out / "unigendet")
    crops, captions = captioned_crops(p, p.data.split_photos["val"], 128, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        l_cap, l_gen = ug.pretraining_terms(ug.model, ug.pretraining_tensors(crops, captions))
    return {"caption_lm_loss_val": round(l_cap.item(), 4), "flow_matching_loss_val": round(l_gen.item(), 4)}


def _entries() -> dict[str, Entry]:
    data = lambda p: (p.data.resolution, p.data.crop_scales, p.data.split_photos, p.seed)  # noqa: E731
    out = [
        Entry("featnet", "all", lambda p: (p.geneval.feature_dim, p.geneval.featnet_steps, *data(p)),
              _featnet_build, _featnet_quality, summary="workbench feature network (FID-style features)"),
    ]
    for photos in ("train", "all"):
        out += [
            Entry(f"vae-{photos}", photos, lambda p: (p.vae, *data(p)), _vae_build, _vae_quality,
                  summary="AutoencoderKL (Stable Diffusion's autoencoder stand-in)"),
            Entry(f"sdiv-{photos}", photos, lambda p: (p.vae, p.sdiv, *data(p)), _sdiv_build, _sdiv_quality,
                  needs=(f"vae-{photos}",), summary="SD Image Variation stand-in (CLIP image encoder + latent UNet)"),
        ]
    out += [
        Entry("pixel-ddpm", "train", lambda p: (p.pixel, *data(p)), _ddpm_build, _eps_quality,
              summary="pixel-space DDPM (ddpm and sdedit families)"),
        Entry("dcgan", "train", lambda p: (p.gan, *data(p)), _gan_build, _gan_quality, needs=("featnet",),
              summary="DCGAN, transposed-convolution upsampling (gan family)"),
        Entry("unified", "all", lambda p: (p.gduf.model, p.gduf.vocab_size, p.gduf.pretrain_batch_size,
                                           p.gduf.pretrain_steps, p.gduf.pretrain_lr, *data(p)),
              _unified_build, _unified_quality, needs=("vae-all",),
              summary="UniGenDet's unified model pretrained on captioning and captioned generation (BAGEL's role)"),
    ]
    return {e.name: e for e in out}


ENTRIES = _entries()


# ---------------------------------------------------------------- integrity

def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): _sha256(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name not in ("card.json", "MODEL_CARD.md") and not f.name.startswith(".udet")}


def zoo_profile(p: Profile) -> Profile:
    """`p` with the zoo's own seed (`ZOO_SEED`), whatever the run's seed."""
    return replace(p, seed=ZOO_SEED)


def key(p: Profile, name: str, zoo_dir=None) -> str:
    """The key a zoo model must have for profile `p`: its configs and the content of the zoo models it was built on."""
    p, e = zoo_profile(p), ENTRIES[name]
    deps = {d: content_key(p, d, zoo_dir) for d in e.needs}
    return config_hash(name, *e.configs(p), *([deps] if deps else []))


def path(p: Profile, name: str, zoo_dir=None) -> Path:
    """The verified folder of zoo model `name`: present, trained with `p`'s configs, every checksum matching."""
    if name not in ENTRIES:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(ENTRIES)}")
    folder = Path(zoo_dir or ZOO_DIR) / name
    fix = f"run `python -m udet_core pretrain --only {name} --force` to rebuild it"
    card_file = folder / "card.json"
    if not card_file.is_file():
        raise DataError(folder, f"zoo model missing (no card.json); {fix}")
    try:
        recorded = card(folder)
        recorded_key, files = recorded["key"], recorded["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(card_file, f"unreadable model card ({e!r}); {fix}") from e
    wanted = key(p, name, zoo_dir)
    if recorded_key != wanted:
        raise DataError(folder, f"trained with other configs or on other zoo models (key {recorded_key}, profile "
                                f"{p.name!r} needs {wanted}); {fix}")
    bad = _mismatches(folder, tuple(sorted(files.items())), _stats(folder))
    if bad:
        raise DataError(folder / bad[0], f"checksum mismatch or file missing (zoo corrupt); {fix}")
    return folder


def card(folder) -> dict:
    """A zoo model's card (config, data, steps, loss curve, quality, checksums)."""
    return json.loads((Path(folder) / "card.json").read_text())


@functools.lru_cache(maxsize=64)
def _mismatches(folder: Path, files: tuple, stats: tuple) -> list[str]:
    """The files of `folder` whose sha256 is not the card's (`files`: (relative path, sha256) pairs). A pure function
    of its arguments, memoised: `stats` (every file's path, size and mtime) is part of the key, so the files are
    hashed again exactly when one of them changed."""
    actual = _files(folder)
    return [rel for rel, sha in files if actual.get(rel) != sha]


def _stats(folder: Path) -> tuple:
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.rglob("*")) if f.is_file())


def content_key(p: Profile, name: str, zoo_dir=None) -> str:
    """The content key of a verified zoo model: a hash of its files' sha256s."""
    return config_hash(card(path(p, name, zoo_dir))["files"])


def verify(p: Profile, names=None, zoo_dir=None) -> dict[str, Path]:
    """Verify every zoo model the profile loads; one clear error for the first missing or corrupt one."""
    return {n: path(p, n, zoo_dir) for n in (names or ENTRIES)}


def summary(p: Profile, zoo_dir=None):
    """One row per verified zoo model: what it is, the photos it saw, steps, last session's wall time, size, quality."""
    import pandas as pd
    rows = []
    for name, folder in verify(p, zoo_dir=zoo_dir).items():
        c = card(folder)
        rows.append({"model": name, "photos": c["photos"], "steps": c["steps"],
                     "wall_s_last_session": c["wall_s_last_session"],
                     "size_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 3),
                     "quality": ", ".join(f"{k} {v}" for k, v in c["quality"].items()), "summary": c["summary"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- pretraining

def _curve(history: list[dict], points: int = 50) -> list[dict]:
    idx = np.unique(np.linspace(0, len(history) - 1, min(points, len(history))).astype(int))
    return [history[i] for i in idx]


def pretrain_one(p: Profile, name: str, zoo_dir=None, work_dir=None, progress: bool = True, force: bool = False) -> Path:
    """Train zoo model `name` (resuming its checkpoint), measure it, and write it with its card."""
    p, e = zoo_profile(p), ENTRIES[name]
    zoo_dir, work_dir = Path(zoo_dir or ZOO_DIR), Path(work_dir or WORK_DIR)
    if not force:
        try:
            return path(p, name, zoo_dir)
        except DataError:
            pass
    deps = {d: path(p, d, zoo_dir) for d in e.needs}   # a clear error when a dependency is missing
    k = key(p, name, zoo_dir)
    work = work_dir / f"{name}-{k}"
    if force:
        shutil.rmtree(work, ignore_errors=True)        # retrain from scratch, not from the last checkpoint
    work.mkdir(parents=True, exist_ok=True)
    configs = [config_dict(c) if hasattr(c, "__dataclass_fields__") else c for c in e.configs(p)]
    atomic_write_json(work / "args.json", {"name": name, "profile": p.name, "configs": configs,
                                           "code_version": code_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tmp = zoo_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    history = e.build(p, e, work, tmp, deps, progress)
    wall = sum(h.get("wall_s", 0) for h in history[-1:]) or time.perf_counter() - t0
    quality = e.quality(p, tmp, deps)
    record = {"name": name, "summary": e.summary, "key": k, "profile": p.name, "photos": e.photos,
              "photo_names": list(photo_set(p, e.photos)),
              "resolution": p.data.resolution, "steps": len(history), "wall_s_last_session": round(wall, 1),
              "torch_threads": torch.get_num_threads(), "code_version": code_version(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "configs": configs,
              "built_on": {d: content_key(p, d, zoo_dir) for d in e.needs},
              "quality": quality, "loss_curve": _curve(history), "files": _files(tmp)}
    atomic_write_json(tmp / "card.json", record)
    atomic_write_text(tmp / "MODEL_CARD.md", model_card(record))
    final = zoo_dir / name
    old = zoo_dir / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)             # a crash may have left one behind
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def pretrain(p: Profile, only=None, progress: bool = True, force: bool = False, zoo_dir=None) -> dict[str, Path]:
    """Pretrain the zoo, or the subset `only`, dependencies first (`ENTRIES` is in dependency order)."""
    unknown = set(only or ()) - set(ENTRIES)
    if unknown:
        raise ValueError(f"unknown zoo models {sorted(unknown)}; known: {list(ENTRIES)}")
    names = [n for n in ENTRIES if not only or n in only]
    return {n: pretrain_one(p, n, zoo_dir=zoo_dir, progress=progress, force=force) for n in names}


def model_card(card: dict) -> str:
    """The human-readable card of one zoo model."""
    files = "\n".join(f"| `{k}` | `{v}` |" for k, v in card["files"].items())
    last = card["loss_curve"][-1] if card["loss_curve"] else {}
    return f"""# {card['name']}: {card['summary']}

**A stand-in trained by the workbench on CPU** (`python -m udet_core pretrain --only {card['name']}`), not a
released model. Profile `{card['profile']}`, {card['resolution']} px, {card['steps']} steps; trained on crops of the
`{card['photos']}` photo set: {', '.join(card['photo_names'])} (licences in udet-mini's data card).

- Training wall time: {card['wall_s_last_session']} s with {card.get('torch_threads', '?')} torch thread(s) (the last
  session's part, if resumed); code version {card.get('code_version', '?')}
- Held-out quality: {json.dumps(card['quality'])}
- Last logged step: {json.dumps(last)}
- Config key: `{card['key']}`; full configs and the loss curve in `card.json`.

| file | sha256 |
|---|---|
{files}
"""
