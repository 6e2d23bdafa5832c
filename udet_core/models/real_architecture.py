"""The real Stable Diffusion Image Variations architecture, built with random weights, and a bench that runs the
workbench's CRAFT command line on it.

Reference: Lambda Labs, "Stable Diffusion Image Variations" (`lambdalabs/sd-image-variations-diffusers`): the Stable
Diffusion v1 UNet and VAE conditioned on the projected CLIP ViT-L/14 image embedding instead of CLIP text.

Nothing here downloads anything. `build_real_architecture("sd-v1")` builds every module at the checkpoint's sizes
(UNet 859.5 M parameters, CLIP vision 304.0 M, VAE 83.7 M) from diffusers/transformers classes and configs, with
random weights, and `save_real_architecture` writes it as a `StableDiffusionImageVariationPipeline` folder that
`udet_core.models.backbones.load_image_variation` loads exactly as it would load the real checkpoint. `"reduced"`
keeps the same block structure (block types, layers per block, number of levels, attention heads, patch size, down
factor) at small widths, for a fast CI test of the same code path.

`real_architecture_bench` builds the folder, writes a small `0_real/1_fake` tree and runs
`python -m udet_core train craft` and `detect` on it as subprocesses, measuring each one's wall time and peak resident
memory; `training_memory_estimate` says analytically which module choices fit in memory.

    python -m udet_core.models.real_architecture FOLDER --widths sd-v1          # the folder only
    python -m udet_core bench real-architecture --out OUT --widths sd-v1 --size 256 --modules decoder,encoder
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from udet_core.data.synthetic import synthetic_tree
from udet_core.models.backbones import CLIP_MEAN, CLIP_STD, ImageVariation

# ------------------------------------------------------------------ the architecture (fixed) and its widths (named)

# Stable Diffusion v1's UNet: 4 levels, cross-attention on the first three going down and the last three going up.
UNET_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
LAYERS_PER_BLOCK = 2          # resnets per down block (up blocks: 3)
ATTENTION_HEAD_DIM = 8        # diffusers' name for SD v1's number of attention heads (8 heads at every level)
LATENT_CHANNELS = 4
UNET_SAMPLE_SIZE = 64         # latent side the checkpoint was trained at (64 x 8 = 512 px); the UNet takes any size
VAE_LEVELS = 4                # 3 downsamplings: down factor 8
VAE_SCALING_FACTOR = 0.18215
CLIP_IMAGE_SIZE = 224         # ViT-L/14 at 224 px: a 16 x 16 patch grid + the class token
CLIP_PATCH_SIZE = 14


@dataclass(frozen=True)
class ArchitectureWidths:
    """The widths of the SD Image Variations modules; everything else about the architecture is fixed above."""
    unet_block_out_channels: tuple[int, ...]
    cross_attention_dim: int          # = the CLIP projection dim (the UNet cross-attends to the image embedding)
    clip_hidden_size: int
    clip_intermediate_size: int
    clip_layers: int
    clip_heads: int
    vae_block_out_channels: tuple[int, ...]
    norm_num_groups: int = 32         # GroupNorm groups in UNet and VAE: must divide every block's channel count


WIDTHS = {
    # the checkpoint's sizes: SD v1 UNet, CLIP ViT-L/14 vision tower + projection, SD's f=8 KL autoencoder
    "sd-v1": ArchitectureWidths(unet_block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                clip_hidden_size=1024, clip_intermediate_size=4096, clip_layers=24, clip_heads=16,
                                vae_block_out_channels=(128, 256, 512, 512)),
    # the same blocks at small widths (seconds on a CPU): 32 groups divide 32, 64 and the up blocks' 96 and 128
    "reduced": ArchitectureWidths(unet_block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                                  clip_hidden_size=64, clip_intermediate_size=256, clip_layers=2, clip_heads=2,
                                  vae_block_out_channels=(32, 64, 64, 64)),
}


def widths_of(widths) -> ArchitectureWidths:
    """A name from `WIDTHS` or an `ArchitectureWidths` itself."""
    if isinstance(widths, ArchitectureWidths):
        return widths
    if widths not in WIDTHS:
        raise ValueError(f"unknown widths {widths!r}; choose one of {sorted(WIDTHS)}")
    return WIDTHS[widths]


# ------------------------------------------------------------------ one builder per module (random weights)

def build_unet(widths="sd-v1"):
    """The SD v1 `UNet2DConditionModel` (Rombach et al. 2022, `unet/config.json` of sd-image-variations-diffusers)."""
    from diffusers import UNet2DConditionModel
    w = widths_of(widths)
    return UNet2DConditionModel(sample_size=UNET_SAMPLE_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                down_block_types=UNET_DOWN_BLOCKS, up_block_types=UNET_UP_BLOCKS,
                                block_out_channels=w.unet_block_out_channels, layers_per_block=LAYERS_PER_BLOCK,
                                cross_attention_dim=w.cross_attention_dim, attention_head_dim=ATTENTION_HEAD_DIM,
                                norm_num_groups=w.norm_num_groups, act_fn="silu", flip_sin_to_cos=True, freq_shift=0)


def build_image_encoder(widths="sd-v1"):
    """CLIP ViT-L/14 vision tower with its projection (Radford et al. 2021, openai/clip-vit-large-patch14)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    w = widths_of(widths)
    config = CLIPVisionConfig(hidden_size=w.clip_hidden_size, intermediate_size=w.clip_intermediate_size,
                              num_hidden_layers=w.clip_layers, num_attention_heads=w.clip_heads,
                              image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE,
                              projection_dim=w.cross_attention_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPVisionModelWithProjection(config)


def build_feature_extractor():
    """CLIP's preprocessing (the pipeline's `feature_extractor`): bicubic resize + 224 px centre crop, CLIP mean/std."""
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": CLIP_IMAGE_SIZE}, resample=3,   # 3 = bicubic
                              do_center_crop=True, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
                              do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def build_vae(widths="sd-v1"):
    """Stable Diffusion's f=8 `AutoencoderKL` (4 latent channels, scaling factor 0.18215; Rombach et al. 2022)."""
    from diffusers import AutoencoderKL
    w = widths_of(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * VAE_LEVELS,
                         up_block_types=("UpDecoderBlock2D",) * VAE_LEVELS, block_out_channels=w.vae_block_out_channels,
                         layers_per_block=LAYERS_PER_BLOCK, latent_channels=LATENT_CHANNELS, act_fn="silu",
                         norm_num_groups=w.norm_num_groups, sample_size=UNET_SAMPLE_SIZE * 2 ** (VAE_LEVELS - 1),
                         scaling_factor=VAE_SCALING_FACTOR)


def build_scheduler():
    """SD-IV's scheduler: PNDM (PLMS steps only) over SD's scaled-linear betas 0.00085..0.012, 1000 steps."""
    from diffusers import PNDMScheduler
    return PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


def build_real_architecture(widths="sd-v1", seed: int = 0) -> ImageVariation:
    """All five components of SD Image Variations with random weights (seeded: the same seed, the same weights)."""
    torch.manual_seed(seed)
    unet = build_unet(widths)
    encoder = build_image_encoder(widths)
    vae = build_vae(widths)
    return ImageVariation(vae.eval(), encoder.eval(), unet.eval(), build_scheduler(), build_feature_extractor())


def save_real_architecture(folder, widths="sd-v1", seed: int = 0) -> Path:
    """Build and `save_pretrained` as a `StableDiffusionImageVariationPipeline` folder (safetensors, no safety
    checker), with `random_weights.json` beside it saying what it is: not a trained checkpoint."""
    folder = Path(folder)
    iv = build_real_architecture(widths, seed)
    iv.save(folder)     # safety_checker=None, requires_safety_checker=False, safe_serialization=True
    w = widths_of(widths)
    card = {"what": "Stable Diffusion Image Variations architecture with RANDOM weights (udet real_architecture)",
            "widths": widths if isinstance(widths, str) else "custom", "seed": seed, "sizes": asdict(w),
            "parameters": {k: _n_params(m) for k, m in
                           (("unet", iv.unet), ("image_encoder", iv.image_encoder), ("vae", iv.vae))}}
    (folder / "random_weights.json").write_text(json.dumps(card, indent=2))
    return folder


# ------------------------------------------------------------------ structure and memory

def _n_params(module, prefixes: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not prefixes or n.startswith(prefixes))


def meta_architecture(widths="sd-v1") -> ImageVariation:
    """The modules on the meta device: shapes and structure without memory (sd-v1 in well under a second)."""
    with torch.device("meta"):
        return ImageVariation(build_vae(widths), build_image_encoder(widths), build_unet(widths), build_scheduler(),
                              None)


def parameter_counts(widths="sd-v1") -> dict:
    """Parameters per module (the VAE's decoder side, which CRAFT fine-tunes, separately)."""
    iv = meta_architecture(widths)
    return {"unet": _n_params(iv.unet), "image_encoder": _n_params(iv.image_encoder), "vae": _n_params(iv.vae),
            "vae_decoder": _n_params(iv.vae, ("decoder.", "post_quant_conv."))}


def block_structure(iv: ImageVariation) -> dict:
    """What "the same architecture" means, width aside: per UNet level the block type, resnets, transformer blocks,
    attention heads and whether it resamples; the VAE's levels, resnets per level and down factor; CLIP's patch grid."""
    def level(block, resample):
        attn = getattr(block, "attentions", None) or []
        heads = [t.transformer_blocks[0].attn1.heads for t in attn]
        cross = [t.transformer_blocks[0].attn2 is not None for t in attn]
        return (type(block).__name__, len(block.resnets), len(attn), tuple(heads), tuple(cross),
                getattr(block, resample) is not None)
    u, v, c = iv.unet, iv.vae, iv.image_encoder.config
    mid = u.mid_block
    return {
        "unet_down": [level(b, "downsamplers") for b in u.down_blocks],
        "unet_mid": (type(mid).__name__, len(mid.resnets), len(mid.attentions)),
        "unet_up": [level(b, "upsamplers") for b in u.up_blocks],
        "unet_in_out": (u.config.in_channels, u.config.out_channels),
        "vae_down": [(type(b).__name__, len(b.resnets), b.downsamplers is not None) for b in v.encoder.down_blocks],
        "vae_up": [(type(b).__name__, len(b.resnets), b.upsamplers is not None) for b in v.decoder.up_blocks],
        "vae_down_factor": 2 ** sum(b.downsamplers is not None for b in v.encoder.down_blocks),
        "vae_latent_channels": v.config.latent_channels,
        "clip_patch": (c.image_size, c.patch_size, (c.image_size // c.patch_size) ** 2),
    }


def parse_modules(choice: str) -> tuple[str, ...]:
    """'decoder', 'encoder+decoder', 'all', ... -> the modules CRAFT fine-tunes, in (encoder, unet, decoder) order."""
    names = ("encoder", "unet", "decoder")
    parts = names if choice == "all" else tuple(s.strip() for s in choice.split("+"))
    unknown = set(parts) - set(names)
    if unknown or not parts:
        raise ValueError(f"unknown module(s) {sorted(unknown)} in {choice!r}: use 'all' or '+'-joined {names}")
    return tuple(n for n in names if n in parts)


def training_memory_estimate(widths="sd-v1", trained=("decoder",), weight_bytes: int = 4,
                             optimizer_bytes: int = 8, frozen_base: bool = True) -> dict:
    """Parameter memory (MiB) of `train craft` and `detect` as the workbench runs them; activations come on top.

    Craft keeps the frozen base (UNet + CLIP + VAE, for the cached prefix and for scoring) and a trainable deep copy
    of each trained module (the whole VAE for the decoder); each trained parameter has a gradient and AdamW's two
    moments (`optimizer_bytes` = 8 in fp32; an 8-bit Adam: 2; Adafactor: ~0). `detect` (`Craft.load`) holds the base,
    the copies and the trained modules' weights read from the checkpoint's pipeline folder; it reads the whole folder,
    but the frozen modules' safetensors stay memory-mapped and untouched, so they never become resident (reading it
    eagerly would cost another `base_mb`). `weight_bytes=2`: bf16 weights and gradients. `frozen_base=False`: what
    training would need if the trained copy replaced the base module.
    """
    p = parameter_counts(widths)
    full = {"encoder": p["image_encoder"], "unet": p["unet"], "decoder": p["vae"]}            # deep-copied modules
    trainable = {"encoder": p["image_encoder"], "unet": p["unet"], "decoder": p["vae_decoder"]}
    base = weight_bytes * (p["unet"] + p["image_encoder"] + p["vae"])
    copies = weight_bytes * sum(full[m] for m in trained)
    states = (weight_bytes + optimizer_bytes) * sum(trainable[m] for m in trained)   # gradient + optimizer moments
    train = (base if frozen_base else base - copies) + copies + states
    mib = 2 ** 20
    return {"base_mb": round(base / mib), "copies_mb": round(copies / mib), "grad_optim_mb": round(states / mib),
            "train_mb": round(train / mib), "detect_mb": round((base + 2 * copies) / mib)}


# ------------------------------------------------------------------ the bench: the CLI as subprocesses, measured

def run_measured(cmd: list[str], log_path, env: dict | None = None, cwd=None) -> dict:
    """Run `cmd` (stdout + stderr to `log_path`); its exit code, wall time and peak resident memory (MiB), the
    latter from the kernel's own accounting of that child (`wait4` rusage: exact, no sampling)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here: Popen must not wait for it again
    kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)   # Linux: KiB, macOS: bytes
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(kib / 1024)}


def disk_mb(path) -> float:
    path = Path(path)
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def _tail(path, n: int = 25) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


def real_architecture_bench(out_dir, widths="sd-v1", size: int = 256, modules=("decoder",), pipeline=None,
                            seed: int = 0, budget_mb: int = 17_000, env: dict | None = None,
                            extra_settings=()) -> list[dict]:
    """Build (or reuse `pipeline`) the SD-IV folder, write a `size`-px 0_real/1_fake tree (8 train, 2 test images)
    and run `train craft` (1 step, batch 2) and `detect` through the CLI for each module choice in `modules`
    ('decoder', 'encoder', 'unet', 'encoder+decoder', 'all', ...). One row per stage: wall_s and peak_rss_mb of the
    subprocess, its exit code, and the analytic parameter memory; a choice whose training estimate exceeds
    `budget_mb` is not run (its row says so). Each choice has its own run directory, so none reuses another's cached
    real centre or frozen-prefix latents (timings are cold). Logs in `out_dir/logs`, rows in `out_dir/bench.json`."""
    import udet_core
    out = Path(out_dir).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cwd = Path(udet_core.__file__).resolve().parents[1]      # so that `python -m udet_core` is this checkout
    name = widths if isinstance(widths, str) else "custom"
    rows = []

    def record(row):
        rows.append(row)
        (out / "bench.json").write_text(json.dumps(rows, indent=2))

    if pipeline is None:
        pipeline = out / f"sd-iv-{name}"
        r = run_measured([sys.executable, "-m", "udet_core.models.real_architecture", str(pipeline),
                          "--widths", name, "--seed", str(seed)], logs / "build.log", env, cwd)
        record({"stage": "build", "widths": name, "modules": "", **r, "disk_mb": disk_mb(pipeline)
                if pipeline.exists() else None, **({"error": _tail(logs / "build.log")} if r["rc"] else {})})
        if r["rc"]:
            return rows
    pipeline = Path(pipeline).resolve()
    tree = out / "tree"
    synthetic_tree(tree, n_train=8, n_test=2, size=size, seed=seed, progress=False)
    for choice in modules:
        trained = parse_modules(choice)
        tag = "+".join(trained)
        est = training_memory_estimate(widths, trained)
        common = {"widths": name, "modules": tag, "size": size}
        if est["train_mb"] > budget_mb:
            record({"stage": "train", **common, "rc": None, "skipped": f"parameter memory alone {est['train_mb']} "
                    f"MiB > budget {budget_mb} MiB", "estimate_mb": est["train_mb"]})
            continue
        ckpt, scores = out / f"ckpt-{tag}", out / f"scores-{tag}.csv"
        flags = [f"craft.train_{m}={m in trained}" for m in ("encoder", "unet", "decoder")]
        settings = [f"data.resolution={size}", "craft.steps=1", "craft.batch_size=2", "craft.eval_every=0",
                    *flags, *extra_settings]
        cmd = [sys.executable, "-m", "udet_core", "train", "craft", "--data", str(tree), "--out", str(ckpt),
               "--backbone", str(pipeline), "--profile", "tiny", "--run-dir", str(out / f"run-{tag}"),
               "--val-fraction", "0.5", "--seed", str(seed)]
        for s in settings:
            cmd += ["--set", s]
        r = run_measured(cmd, logs / f"train-{tag}.log", env, cwd)
        record({"stage": "train", **common, **r, "estimate_mb": est["train_mb"],
                "disk_mb": disk_mb(ckpt) if ckpt.exists() else None,
                **({"error": _tail(logs / f"train-{tag}.log")} if r["rc"] else {})})
        if r["rc"]:
            continue
        cmd = [sys.executable, "-m", "udet_core", "detect", str(tree / "test"), "--checkpoint", str(ckpt),
               "--out", str(scores), "--batch-size", "2"]
        r = run_measured(cmd, logs / f"detect-{tag}.log", env, cwd)
        record({"stage": "detect", **common, **r, "estimate_mb": est["detect_mb"],
                **({"error": _tail(logs / f"detect-{tag}.log")} if r["rc"] else {})})
    return rows


def main(argv=None) -> int:
    """`python -m udet_core.models.real_architecture FOLDER [--widths W] [--seed S]`: write the pipeline folder (the
    bench's build stage runs this as its own process, to measure it); the bench is `python -m udet_core bench
    real-architecture`."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m udet_core.models.real_architecture",
                                 description="write the random-weight SD Image Variations pipeline folder")
    ap.add_argument("folder")
    ap.add_argument("--widths", choices=list(WIDTHS), default="sd-v1")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    folder = save_real_architecture(a.folder, a.widths, a.seed)
    print(f"{a.widths} SD Image Variations (random weights) -> {folder}: {disk_mb(folder)} MiB, "
          f"{time.perf_counter() - t0:.1f} s; parameters {parameter_counts(a.widths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
