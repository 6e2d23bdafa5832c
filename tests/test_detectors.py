"""The detector registry and the common evaluation protocol; the baselines' own mechanics."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from udet_core.engine.metrics import calibrate_threshold, mean_std_table
from udet_core.methods.base import DETECTORS, Detector, detector_class, fitted, register
from udet_core.study import evaluation
from udet_core.world.weights import default_weights


@pytest.fixture(scope="module")
def bench(tiny_wb):
    return tiny_wb.p, tiny_wb.run_dir, tiny_wb.images, tiny_wb.df


class Brightness(Detector):
    """A toy detector: the distance of an image's mean brightness from the real training images' mean."""
    fitted_on = []

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        images, df, _ = train.load()
        Brightness.fitted_on.append(set(df["split"]))
        self.mu = float(images[df["label"].to_numpy() == 0].mean()) + seed * 0.01
        return {"mu": self.mu}

    def score(self, images, *, progress=False):
        return np.abs(images.reshape(len(images), -1).mean(1) - self.mu)

    def save(self, folder):
        (folder / "toy.json").write_text(json.dumps({"mu": self.mu}))

    @classmethod
    def load(cls, folder, p, run_dir):
        det = cls(p, run_dir)
        det.mu = json.loads((folder / "toy.json").read_text())["mu"]
        return det


def test_a_registered_toy_detector_gets_every_table(bench, tiny_wb):
    p, run_dir, images, df = bench
    register("toy-brightness")(Brightness)
    try:
        names, seeds = ["toy-brightness"], (0, 1, 2)
        r = evaluation.comparison(tiny_wb, names, seeds)
        summ, fam, long, fam_long = r.summary, r.per_family, r.long, r.family_long
        assert list(summ["subset"]) == ["all test", "reals + seen families", "reals + held-out families"]
        assert (summ["seeds"] == 3).all() and (summ["images_per_s"] > 0).all() and (summ["peak_rss_mb"] > 0).all()
        assert summ["AP"].str.fullmatch(r"\d\.\d{3} ± \d\.\d{3}").all()
        assert len(long) == 9 and long[["bacc", "AP", "AUC"]].apply(lambda c: c.between(0, 1)).all().all()
        assert set(fam["family"]) == set(p.families.seen) | set(p.families.held_out)
        assert len(fam_long) == 3 * len(fam)
        # fitted on train rows only; the threshold comes from the validation split
        assert all(s == {"train"} for s in Brightness.fitted_on)
        det = fitted("toy-brightness", p, run_dir, images, df, seed=1)
        val = (df["split"] == "val").to_numpy()
        assert det.threshold == pytest.approx(calibrate_threshold(det.score(images[val]), df["label"][val].to_numpy()))
        n_fits = len(Brightness.fitted_on)
        fitted("toy-brightness", p, run_dir, images, df, seed=1)
        assert len(Brightness.fitted_on) == n_fits          # cached: loaded, not refitted

        r = evaluation.cross_domain(tiny_wb, names, seeds)
        matrix, xlong = r.summary, r.long
        assert set(matrix["train_domain"]) == {"scene", "science"}
        assert {"bacc on scene", "bacc on science"} <= set(matrix.columns)
        assert len(xlong) == 2 * 2 * 3 and xlong["n"].gt(0).all()

        r = evaluation.robustness(tiny_wb, names, seeds)
        rob, rob_long = r.summary, r.long
        assert len(rob) == len(evaluation.robustness_conditions(p))
        assert len(rob_long) == len(rob) * 3 and (rob_long["n"] == 2 * p.eval.robustness_per_class).all()

        r = evaluation.format_bias(tiny_wb, names, seeds)
        fmt, fmt_long = r.summary, r.long
        assert len(fmt) == 1 and len(fmt_long) == 3
        assert fmt_long["flipped_all"].between(0, 1).all()
    finally:
        DETECTORS.pop("toy-brightness", None)


def test_evaluation_scores_each_image_set_once(bench, tiny_wb):
    p, run_dir, images, df = bench
    calls = []

    class Counting(Brightness):
        def score(self, images, *, progress=False):
            calls.append(len(images))
            return super().score(images)

    register("toy-counting")(Counting)
    try:
        evaluation.format_bias(tiny_wb, ["toy-counting"], (0,))
        n = len(calls)
        again = evaluation.format_bias(tiny_wb, ["toy-counting"], (0,)).summary
        assert n >= 2 and len(calls) == n                         # the rerun read the stored scores
        assert again["flipped_all"].str.match(r"\d").all()
    finally:
        DETECTORS.pop("toy-counting", None)


def test_unknown_detector_is_named():
    with pytest.raises(ValueError, match="unknown detector 'nope'.*registered"):
        detector_class("nope")


def test_mean_std_table_by_hand():
    long = pd.DataFrame({"d": ["a", "a", "a", "b"], "x": [0.1, 0.2, 0.3, 0.5]})
    t = mean_std_table(long, ["d"], ["x"])
    assert list(t["x"]) == ["0.200 ± 0.100", "0.500"] and list(t["seeds"]) == [3, 1]


def test_calibration_needs_both_classes():
    with pytest.raises(ValueError, match="real and fake"):
        calibrate_threshold(np.array([0.1, 0.2]), np.array([0, 0]))


@pytest.mark.parametrize("name", ["cnnspot", "dire", "aeroblade", "craft", "unigendet"])
def test_builtin_detector_fits_saves_and_reloads(bench, name):
    p, run_dir, images, df = bench
    det = fitted(name, p, run_dir, images, df, seed=0, weights=default_weights(p, run_dir))
    again = fitted(name, p, run_dir, images, df, seed=0, weights=default_weights(p, run_dir))         # loaded from its artifact
    x = images[(df["split"] == "test").to_numpy()][:8]
    s = det.score(x)
    assert s.shape == (8,) and np.isfinite(s).all()
    assert np.allclose(again.score(x), s, atol=1e-5) and again.threshold == det.threshold


def test_dire_cache_matches_a_fresh_reconstruction(bench):
    p, run_dir, images, df = bench
    det = fitted("dire", p, run_dir, images, df, seed=0, weights=default_weights(p, run_dir))
    x = images[(df["split"] == "val").to_numpy()][:4]
    cached = det.dire_images(x)
    fresh = det.uncached().dire_images(x)
    assert cached.dtype == np.uint8 and np.array_equal(cached, fresh) and fresh.max() > 0


def test_aeroblade_takes_the_minimum_over_autoencoders(bench, tmp_path):
    from dataclasses import replace

    from diffusers import AutoencoderKL

    from udet_core.data.images import to_tensor
    from udet_core.methods.aeroblade import Aeroblade, aeroblade_score
    p, run_dir, images, df = bench
    vae = AutoencoderKL.from_pretrained(str(_vae_path(p, run_dir)))
    torch.manual_seed(1)
    other = AutoencoderKL.from_config(vae.config)                 # an untrained second autoencoder
    other.save_pretrained(tmp_path / "other_ae")
    det = Aeroblade(replace(p, aeroblade=replace(p.aeroblade, extra_autoencoders=(str(tmp_path / "other_ae"),))),
                    run_dir, weights=default_weights(p, run_dir))
    assert len(det.autoencoders()) == 2
    x = to_tensor(images[:6])
    a, b = (aeroblade_score([v], det.lpips, x, 2) for v in det.autoencoders())
    assert not torch.allclose(a, b)
    assert torch.allclose(aeroblade_score(det.autoencoders(), det.lpips, x, 2), torch.maximum(a, b))
    assert np.allclose(det.score(images[:6]), torch.maximum(a, b).numpy())


def _vae_path(p, run_dir):
    from udet_core.world.benchmark import build_benchmark
    return build_benchmark(p, run_dir, progress=False).generators.vae_path


def test_cnnspot_augmentation_is_keyed_by_the_draw_and_switchable():
    from udet_core.core.profiles import ClassifierConfig
    from udet_core.methods.cnnspot import blur_jpeg_augment
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    off = ClassifierConfig(blur_prob=0.0, jpeg_prob=0.0)
    on = ClassifierConfig(blur_prob=1.0, jpeg_prob=1.0)
    assert torch.equal(blur_jpeg_augment((x, 1), np.random.default_rng((0, 3, 1)), off)[0], x)
    a, label = blur_jpeg_augment((x, 1), np.random.default_rng((0, 3, 1)), on)
    b, _ = blur_jpeg_augment((x, 1), np.random.default_rng((0, 3, 1)), on)    # the same draw key: the same result
    c, _ = blur_jpeg_augment((x, 1), np.random.default_rng((0, 3, 2)), on)    # another position: another draw
    assert label == 1 and a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, x) and not torch.equal(a, c)


def test_craft_scores_through_the_prefix_cache_equal_fresh_scores(bench):
    from udet_core.methods.craft import cache_dir, prefix_key
    p, run_dir, images, df = bench
    det = fitted("craft", p, run_dir, images, df, seed=0, weights=default_weights(p, run_dir))
    x = images[(df["split"] == "test").to_numpy()][:6]
    before = set(cache_dir(run_dir).glob("craft-prefix-*"))
    cached = det.score(x)
    assert len(set(cache_dir(run_dir).glob("craft-prefix-*")) - before) == 1     # one new prefix file
    again = det.score(x)                                                          # read back from it
    fresh = det.uncached().score(x)
    assert np.allclose(cached, fresh, atol=1e-6) and np.allclose(again, fresh, atol=1e-6)
    # what the prefix depends on is in its key; what it does not depend on is not
    m = det.model
    key = prefix_key(m)
    assert prefix_key(m, fast=True) != key
    m.cfg = replace(m.cfg, lam=m.cfg.lam * 2)
    assert prefix_key(m) != key
    m.cfg = replace(m.cfg, lam=m.cfg.lam / 2, m=0.9, delta=0.9, loss="l1")
    assert prefix_key(m) == key


def test_ablation_variants_change_one_setting_each(tiny):
    from dataclasses import fields

    from udet_core.study.craft import ablation_variants, scaled_k
    assert (scaled_k(15, 50), scaled_k(15, 10), scaled_k(5, 10), scaled_k(50, 10), scaled_k(1, 10)) == (15, 3, 1, 10, 1)
    v = ablation_variants(tiny)
    modules = {"train_encoder", "train_unet", "train_decoder"}
    allowed = {"table2": modules | {"loss", "perturb"}, "table5": modules | {"perturb"}, "table6": {"k"}, "lambda": {"lam"},
               "margin": {"m"}, "delta": {"delta"}}
    for group, cfgs in v.items():
        for cfg in cfgs.values():
            changed = {f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(tiny.craft, f.name)}
            assert changed <= allowed[group], (group, changed)
    assert len({(c.train_encoder, c.train_unet, c.train_decoder) for c in v["table5"].values()}) == 8
    assert v["table5"]["w/o fine-tune"] == v["table2"]["baseline (no fine-tune)"]      # paper Table 5 = its Table 2 row
    assert len(v["table2"]) == 8 and v["table2"]["CR + CE + perturbation"] == tiny.craft
    assert sorted(c.k for c in v["table6"].values()) == sorted({scaled_k(k, tiny.craft.n_steps) for k in tiny.ablation.k_of_50})


def test_ablation_table_fits_each_variant_per_seed_and_shares_the_full_model(bench, tiny_wb):
    p, run_dir, images, df = bench
    variants = {"full": p, "L2": replace(p, craft=replace(p.craft, loss="l2"))}
    r = evaluation.ablation(tiny_wb, variants, seeds=(0, 1))
    summ, long = r.summary, r.long
    assert len(long) == 2 * 2 * 3 and set(long["variant"]) == {"full", "L2"}
    assert summ["seeds"].eq(2).all()
    full0 = long[(long.variant == "full") & (long.seed == 0) & (long.subset == "all test")].iloc[0]
    det = fitted("craft", p, run_dir, images, df, seed=0, weights=default_weights(p, run_dir))  # the same cached model as notebook 03's
    test = (df["split"] == "test").to_numpy()
    s = det.score(images[test])
    assert full0["AP"] == pytest.approx(evaluation.summary(df["label"].to_numpy()[test], s, det.threshold)["AP"])


def test_claim_checks_by_hand():
    long = pd.DataFrame({"variant": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "subset": "all test",
                         "bacc": [0.8, 0.9, 0.5, 0.6]})
    c = evaluation.ordering_claim(long, "a beats b", ["a"], ["b"])
    assert c["agrees"] and c["beyond_seed_spread"]              # gap 0.3 > 2 * 0.0707
    assert not evaluation.ordering_claim(long, "b beats a", ["b"], ["a"])["agrees"]
    assert evaluation.chance_claim(long, "b is chance", "b")["agrees"]
    assert not evaluation.chance_claim(long, "a is chance", "a")["agrees"]
    assert evaluation.best_claim(long, "a is best", "a")["agrees"]
    close = long.assign(bacc=[0.60, 0.70, 0.58, 0.62])             # gap 0.05 < std sum
    c = evaluation.ordering_claim(close, "a beats b", ["a"], ["b"])
    assert c["agrees"] and not c["beyond_seed_spread"]


def test_detector_cache_key_is_the_rows_content_not_where_the_run_directory_lies():
    """The rows a detector was fitted on are keyed by their images and manifest columns, not their absolute paths:
    a run directory moved elsewhere keeps its cached detectors; other images or labels get another key."""
    from udet_core.methods.base import rows_key
    df = pd.DataFrame({"path": ["/runs/a/x.png", "/runs/a/y.png"], "label": [0, 1], "split": "train"})
    images = np.zeros((2, 4, 4, 3), np.uint8)
    key = rows_key(df, images)
    assert rows_key(df.assign(path=["/elsewhere/x.png", "/elsewhere/y.png"]), images) == key
    assert rows_key(df.assign(label=[1, 1]), images) != key and rows_key(df, images + 1) != key


def test_balanced_accuracy_makes_calling_everything_fake_chance():
    """96 reals and 240 fakes, as udet-mini's 'all test': a detector that calls every image fake has plain accuracy
    0.714 but balanced accuracy 0.5, and the chance claim says so; per-class accuracies are kept beside it."""
    from udet_core.engine.metrics import summary
    y = np.r_[np.zeros(96), np.ones(240)].astype(int)
    rng = np.random.default_rng(0)
    s = summary(y, rng.random(len(y)) + 1.0, threshold=0.5)             # every score above the threshold
    assert ((s["real_acc"], s["fake_acc"], s["bacc"]) == (0.0, 1.0, 0.5)) and "acc" not in s
    assert np.mean((np.ones(len(y)) == y)) == pytest.approx(0.714, abs=1e-3)   # what plain accuracy would say
    long = pd.DataFrame({"variant": ["all fake"] * 2, "seed": [0, 1], "subset": "all test", **{
        k: [v, v] for k, v in s.items()}})
    assert evaluation.chance_claim(long, "calling everything fake is chance", "all fake")["agrees"]
    good = summary(y, np.r_[np.zeros(96), np.ones(240)] + rng.normal(0, 0.01, len(y)), threshold=0.5)
    assert good["bacc"] == 1.0


def test_effect_claim_by_hand():
    long = pd.DataFrame({"variant": ["a", "a", "b", "b", "c", "c"], "seed": [0, 1] * 3, "subset": "all test",
                         "bacc": [0.8, 0.9, 0.5, 0.6, 0.70, 0.72]})
    e = evaluation.effect_claim(long, "T")
    # a vs b: gap 0.3, spread 2 * 0.0707 = 0.141 -> margin 0.159, the largest of all ordered pairs
    assert e["measurable"] and e["largest separation"].startswith("a 0.850") and " vs b 0.550" in e["largest separation"]
    assert e["gap"] == pytest.approx(0.3) and e["seed_spread"] == pytest.approx(0.1414, abs=1e-4)
    flat = long.assign(bacc=[0.60, 0.70, 0.58, 0.62, 0.61, 0.63])   # every gap within the seeds' spread
    assert not evaluation.effect_claim(flat, "T")["measurable"]
    tiny = long.assign(bacc=[0.566, 0.566, 0.5661, 0.5661, 0.566, 0.566])  # no seed spread, but a negligible gap
    assert not evaluation.effect_claim(tiny, "T")["measurable"]
    same = long.assign(bacc=0.711)                                  # a degenerate table: all variants equal
    e = evaluation.effect_claim(same, "T")
    assert not e["measurable"] and e["gap"] == 0


def test_rows_key_ignores_columns_derived_from_the_manifest():
    from udet_core.methods.base import rows_key
    df = pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1], "family": ["real", "gan"], "split": ["train"] * 2})
    images = np.zeros((2, 4, 4, 3), np.uint8)
    assert rows_key(df.assign(content=["scene", None]), images) == rows_key(df, images)
    assert rows_key(df.assign(label=[1, 1]), images) != rows_key(df, images)
