"""Backbones built tiny from a config (random init, trained by the workbench) or loaded from a local folder.

The Stable Diffusion Image Variation stand-in is saved with `save_pretrained`, so
`StableDiffusionImageVariationPipeline.from_pretrained(folder)` loads it exactly as it loads the real
`sd-image-variations-diffusers` checkpoint: code that takes one takes the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from udet_core.core.errors import DataError
from udet_core.core.profiles import (
    ImageVariationConfig,
    PixelDiffusionConfig,
    VAEConfig,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_vae(cfg: VAEConfig, resolution: int):
    """AutoencoderKL with len(block_out_channels)-1 downsamplings (nearest+conv upsampling, as SD)."""
    from diffusers import AutoencoderKL
    n = len(cfg.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
                         layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                         norm_num_groups=cfg.norm_num_groups, sample_size=resolution)


def build_clip_vision(cfg: ImageVariationConfig, resolution: int):
    """CLIP vision encoder with projection (the image conditioner of SD Image Variations) + its processor."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    config = CLIPVisionConfig(hidden_size=cfg.clip_hidden_size, intermediate_size=4 * cfg.clip_hidden_size,
                              num_hidden_layers=cfg.clip_layers, num_attention_heads=cfg.clip_heads,
                              image_size=resolution, patch_size=cfg.clip_patch_size, projection_dim=cfg.projection_dim)
    processor = CLIPImageProcessor(size={"shortest_edge": resolution},
                                   crop_size={"height": resolution, "width": resolution},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return CLIPVisionModelWithProjection(config), processor


def build_cond_unet(cfg: ImageVariationConfig, latent_size: int, latent_channels: int):
    """Image-conditioned latent UNet2DConditionModel (cross-attention on the CLIP image embedding)."""
    from diffusers import UNet2DConditionModel
    n = len(cfg.unet_block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=tuple(cfg.unet_block_out_channels), down_block_types=down,
                                up_block_types=up, layers_per_block=cfg.layers_per_block,
                                cross_attention_dim=cfg.projection_dim, attention_head_dim=cfg.attention_head_dim,
                                norm_num_groups=min(32, cfg.unet_block_out_channels[0]))


def build_ddim(num_train_timesteps: int, latent: bool = True):
    """DDIM scheduler: SD's scaled-linear betas for latents, linear betas for pixels."""
    from diffusers import DDIMScheduler
    if latent:
        return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=True,
                         set_alpha_to_one=True, steps_offset=0)


def ddim_from_config(config):
    """A DDIM scheduler from another scheduler's config (the real checkpoint ships a PNDM one). DDIMScheduler's own
    default `clip_sample=True` would clip x0 predictions of latents to [-1, 1]; Stable Diffusion never clips, so
    `clip_sample` is pinned to False where the source config does not set it."""
    from diffusers import DDIMScheduler
    return DDIMScheduler.from_config(config, **({} if "clip_sample" in config else {"clip_sample": False}))


def build_pixel_unet(cfg: PixelDiffusionConfig, resolution: int):
    from diffusers import UNet2DModel
    n = len(cfg.block_out_channels)
    return UNet2DModel(sample_size=resolution, in_channels=3, out_channels=3,
                       block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                       norm_num_groups=cfg.norm_num_groups)


@dataclass
class ImageVariation:
    """The components of an SD Image Variation model, whether tiny stand-in or real checkpoint."""
    vae: object
    image_encoder: object
    unet: object
    scheduler: object
    feature_extractor: object

    @property
    def resolution(self) -> int:
        """The pixel resolution the UNet was built for: its latent sample size x the VAE's down factor (stand-in:
        the benchmark's resolution; Stable Diffusion v1: 64 x 8 = 512). The UNet itself takes any multiple of it."""
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def clip_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> CLIP-normalised pixels at the encoder's input size (differentiable; SD-IV: 224)."""
        size = int(self.image_encoder.config.image_size)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x + 1) / 2 - mean) / std

    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning sequence (N, 1, D) for the UNet, as the pipeline's `_encode_image` builds it."""
        return self.image_encoder(self.clip_pixels(x)).image_embeds.unsqueeze(1)

    def pipeline(self):
        from diffusers import StableDiffusionImageVariationPipeline
        return StableDiffusionImageVariationPipeline(
            vae=self.vae, image_encoder=self.image_encoder, unet=self.unet, scheduler=self.scheduler,
            safety_checker=None, feature_extractor=self.feature_extractor, requires_safety_checker=False)

    def save(self, folder) -> Path:
        self.pipeline().save_pretrained(str(folder), safe_serialization=True)
        return Path(folder)


def build_image_variation(cfg: ImageVariationConfig, vae, resolution: int) -> ImageVariation:
    """Tiny random-init SD Image Variation around a (trained) `vae`."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    encoder, processor = build_clip_vision(cfg, resolution)
    unet = build_cond_unet(cfg, resolution // down, vae.config.latent_channels)
    return ImageVariation(vae, encoder, unet, build_ddim(cfg.num_train_timesteps), processor)


def load_image_variation(path) -> ImageVariation:
    """Load a StableDiffusionImageVariationPipeline folder (the stand-in or a real checkpoint) from disk."""
    from diffusers import DDIMScheduler, StableDiffusionImageVariationPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise DataError(path, "not a diffusers pipeline folder (model_index.json missing)")
    pipe = StableDiffusionImageVariationPipeline.from_pretrained(str(path), safety_checker=None,
                                                                 requires_safety_checker=False)
    pipe.to(dtype=torch.float32)   # a half-precision folder: diffusers upcasts UNet and VAE, transformers keeps CLIP
    scheduler = pipe.scheduler if isinstance(pipe.scheduler, DDIMScheduler) else ddim_from_config(pipe.scheduler.config)
    return ImageVariation(pipe.vae.eval(), pipe.image_encoder.eval(), pipe.unet.eval(), scheduler,
                          pipe.feature_extractor)


def image_variation(spec, vae=None, resolution: int | None = None) -> ImageVariation:
    """One entry point: a path loads a pipeline folder (real checkpoint or saved stand-in); an
    `ImageVariationConfig` builds the tiny random-init stand-in around `vae` at `resolution`."""
    if isinstance(spec, ImageVariationConfig):
        if vae is None or resolution is None:
            raise ValueError("building the stand-in from a config needs the (trained) vae and the resolution")
        return build_image_variation(spec, vae, resolution)
    return load_image_variation(spec)
