import numpy as np
import pytest

from udet_core.data import perturb
from udet_core.metrics import tpr_at_fpr
from udet_core.profiles import config_hash, get_profile


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
