"""Stand-in backbones: built tiny from configs, saved with save_pretrained, loaded like real checkpoints."""
import numpy as np
import pytest
import torch
from PIL import Image

from udet_core.data import DataError
from udet_core.models.backbones import (
    build_image_variation,
    build_vae,
    load_image_variation,
)


@pytest.fixture()
def tiny_iv(tiny):
    torch.manual_seed(0)
    vae = build_vae(tiny.vae, tiny.data.resolution)
    return build_image_variation(tiny.sdiv, vae, tiny.data.resolution)


def test_image_variation_round_trip_through_diffusers(tmp_path, tiny_iv, tiny):
    from diffusers import StableDiffusionImageVariationPipeline
    tiny_iv.save(tmp_path / "sdiv")
    assert (tmp_path / "sdiv" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe = StableDiffusionImageVariationPipeline.from_pretrained(tmp_path / "sdiv", safety_checker=None)
    for name in ("unet", "vae", "image_encoder"):
        a, b = getattr(tiny_iv, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the loaded folder runs as an ordinary diffusers pipeline
    R = tiny.data.resolution
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (R, R, 3), dtype=np.uint8))
    out = pipe(image=img, num_inference_steps=2, guidance_scale=1.0, output_type="np", height=R, width=R,
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, R, R, 3) and np.isfinite(out).all()


def test_load_image_variation_matches_saved_weights(tmp_path, tiny_iv, tiny):
    tiny_iv.save(tmp_path / "sdiv")
    iv = load_image_variation(tmp_path / "sdiv")
    assert iv.resolution == tiny.data.resolution
    x = torch.rand(2, 3, tiny.data.resolution, tiny.data.resolution) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(iv.image_embeddings(x), tiny_iv.image_embeddings(x))
    assert iv.scheduler.__class__.__name__ == "DDIMScheduler"


def test_one_entry_point_builds_from_config_or_loads_from_path(tmp_path, tiny_iv, tiny):
    from udet_core.models.backbones import image_variation
    built = image_variation(tiny.sdiv, vae=tiny_iv.vae, resolution=tiny.data.resolution)
    assert built.unet.config.cross_attention_dim == tiny.sdiv.projection_dim
    tiny_iv.save(tmp_path / "sdiv")
    loaded = image_variation(tmp_path / "sdiv")
    assert torch.equal(loaded.unet.conv_in.weight, tiny_iv.unet.conv_in.weight)
    with pytest.raises(ValueError, match="needs the"):
        image_variation(tiny.sdiv)


def test_load_rejects_a_non_pipeline_folder(tmp_path):
    with pytest.raises(DataError, match="model_index.json missing"):
        load_image_variation(tmp_path)
