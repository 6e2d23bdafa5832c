"""The real SD Image Variations architecture (random weights): the reduced widths keep sd-v1's block structure, the
saved folder loads through `load_image_variation`, and the CLI's CRAFT train + detect path runs on it."""
import os

import pandas as pd
import pytest
import torch

from udet_core.models.backbones import load_image_variation
from udet_core.models.real_architecture import (
    block_structure,
    meta_architecture,
    parameter_counts,
    parse_modules,
    real_architecture_bench,
    save_real_architecture,
    training_memory_estimate,
)


def test_sd_v1_widths_are_the_checkpoints_sizes():
    """Published parameter counts of SD v1's UNet, its f=8 VAE and CLIP ViT-L/14's vision tower + projection."""
    assert parameter_counts("sd-v1") == {"unet": 859_520_964, "image_encoder": 303_966_208, "vae": 83_653_863,
                                         "vae_decoder": 49_490_199}
    s = block_structure(meta_architecture("sd-v1"))
    assert [b[0] for b in s["unet_down"]] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [b[0] for b in s["unet_up"]] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert [b[1] for b in s["unet_down"]] == [2, 2, 2, 2] and [b[1] for b in s["unet_up"]] == [3, 3, 3, 3]
    assert s["unet_down"][0][3] == (8, 8) and s["unet_down"][0][4] == (True, True)   # 8 heads, cross-attention
    assert s["vae_down_factor"] == 8 and s["vae_latent_channels"] == 4 and s["clip_patch"] == (224, 14, 256)


def test_memory_estimate_adds_copies_gradients_and_adam_states():
    p = parameter_counts("sd-v1")
    e = training_memory_estimate("sd-v1", ("unet",))
    assert e["copies_mb"] == round(4 * p["unet"] / 2**20)
    assert e["grad_optim_mb"] == round(12 * p["unet"] / 2**20)
    assert training_memory_estimate("sd-v1", parse_modules("all"))["train_mb"] > e["train_mb"] > 17_000
    assert parse_modules("decoder+encoder") == ("encoder", "decoder")
    with pytest.raises(ValueError):
        parse_modules("text_encoder")


def test_reduced_pipeline_has_sd_v1_structure_and_runs_the_craft_cli(tmp_path):
    folder = save_real_architecture(tmp_path / "sd-iv-reduced", "reduced", seed=0)
    iv = load_image_variation(folder)
    assert block_structure(iv) == block_structure(meta_architecture("sd-v1"))
    assert type(iv.unet).__name__ == "UNet2DConditionModel" and type(iv.vae).__name__ == "AutoencoderKL"
    assert type(iv.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert iv.unet.config.cross_attention_dim == iv.image_encoder.config.projection_dim == 32
    assert iv.resolution == 512 and iv.latent_scale == pytest.approx(0.18215)
    # PNDM on disk (as SD-IV ships it), DDIM with SD's scaled-linear betas after loading
    assert (folder / "scheduler" / "scheduler_config.json").read_text().count("PNDMScheduler") == 1
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    assert torch.allclose(iv.scheduler.betas, betas, atol=1e-8) and not iv.scheduler.config.clip_sample
    # one conditioned UNet call at 64 px: CLIP at 224 px -> (N, 1, 32) embedding; latent 8 x 8
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        cond = iv.image_embeddings(x)
        z = iv.vae.encode(x).latent_dist.mode()
        eps = iv.unet(z, 500, encoder_hidden_states=cond).sample
    assert cond.shape == (2, 1, 32) and z.shape == (2, 4, 8, 8) and eps.shape == z.shape

    # one thread: these ops are tiny, and two OpenMP threads on a busy 2-core machine made them ~100x slower
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    rows = real_architecture_bench(tmp_path / "bench", "reduced", size=64, modules=("all",), pipeline=folder, env=env)
    assert [(r["stage"], r["modules"], r["rc"]) for r in rows] == [("train", "encoder+unet+decoder", 0),
                                                                   ("detect", "encoder+unet+decoder", 0)], rows
    assert all(r["wall_s"] > 0 and r["peak_rss_mb"] > 100 for r in rows)
    ckpt = tmp_path / "bench" / "ckpt-encoder+unet+decoder"
    assert (ckpt / "detector.json").is_file() and (ckpt / "craft.safetensors").is_file()
    from safetensors import safe_open
    with safe_open(str(ckpt / "craft.safetensors"), "pt") as f:   # the fine-tuned modules only, not the pipeline
        assert {k.split(".")[0] for k in f.keys()} == {"cls", "mu_real", "mu_real_fast", "encoder", "unet", "vae"}
    assert not (ckpt / "pipeline").exists()
    scores = pd.read_csv(tmp_path / "bench" / "scores-encoder+unet+decoder.csv")
    assert len(scores) == 2 and sorted(p.split("/")[-2] for p in scores["path"]) == ["0_real", "1_fake"]
    assert scores["score"].between(0, 1).all() and set(scores["detector"]) == {"craft"}
