import numpy as np
import pytest

from udet_core.core.profiles import config_hash, get_profile
from udet_core.data import perturb
from udet_core.engine.metrics import tpr_at_fpr


def _img():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_jpeg_error_grows_as_quality_drops():
    a = _img().astype(float)
    err = [np.abs(perturb.jpeg(_img(), q).astype(float) - a).mean() for q in (95, 70, 30)]
    assert err[0] < err[1] < err[2]


def test_crop_blur_resize_shapes():
    a = _img()
    assert perturb.center_crop(a, 0.5, resize_back=False).shape == (16, 16, 3)
    assert perturb.center_crop(a, 0.5).shape == a.shape
    assert (perturb.gaussian_blur(a, 0) == a).all()
    assert perturb.gaussian_blur(a, 1.0).std() < a.std()
    assert perturb.resize(a, 20).shape == (20, 20, 3)
    out = perturb.apply(a, jpeg_quality=50, crop_ratio=0.9, blur_sigma=0.5)
    assert out.shape == a.shape and out.dtype == np.uint8


def test_tpr_at_fpr():
    y = np.r_[np.zeros(100), np.ones(10)]
    s = np.r_[np.linspace(0, 1, 100), np.full(5, 2.0), np.full(5, 0.5)]
    assert tpr_at_fpr(y, s, 0.05) == pytest.approx(0.5)
    assert tpr_at_fpr(y, s, 0.6) == pytest.approx(1.0)


def test_profiles_and_hashes():
    assert config_hash(get_profile("tiny")) == config_hash(get_profile("tiny"))
    assert config_hash(get_profile("tiny")) != config_hash(get_profile("tiny", seed=1))
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


def test_profiles_round_trip_through_their_config_dict_and_take_dotted_settings():
    from udet_core.core.profiles import (
        PROFILES,
        Profile,
        config_dict,
        config_hash,
        from_config_dict,
        get_profile,
        with_settings,
    )
    for name in PROFILES:
        p = get_profile(name)
        assert from_config_dict(Profile, config_dict(p)) == p and config_hash(from_config_dict(Profile, config_dict(p))) == config_hash(p)
    with pytest.raises(ValueError, match="has no field"):
        from_config_dict(Profile, {**config_dict(get_profile("tiny")), "colour": 1})
    q = with_settings(get_profile("tiny"), ["data.resolution=256", "craft.steps=1", "craft.distance=mse",
                                            "ablation.seeds=[0, 1, 2]"])
    assert (q.data.resolution, q.craft.steps, q.craft.distance, q.ablation.seeds) == (256, 1, "mse", (0, 1, 2))
    assert q.craft.k == get_profile("tiny").craft.k                      # everything else kept
    with pytest.raises(ValueError, match="unknown setting 'craft.stepz'"):
        with_settings(q, ["craft.stepz=1"])
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        with_settings(q, ["craft.steps"])
