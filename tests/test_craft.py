"""CRAFT: equations, the frozen-prefix cache, persistence, real-pipeline folders, detection CLI."""
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from udet_core.data.dataset import ArrayDataset
from udet_core.data.images import to_uint8
from udet_core.data.manifest import load_images
from udet_core.engine.losses import craft_cr_loss, craft_total_loss
from udet_core.engine.metrics import calibrate_threshold
from udet_core.methods.craft import (
    Craft,
    fit,
    latent_center_distance,
    mean_center,
    perturb_latent,
    prefix_cache,
    split_tensors,
)
from udet_core.study.craft import premise_check
from udet_core.world.weights import default_weights


def test_cr_loss_matches_eq6_by_hand():
    d = torch.tensor([0.1, 0.2, 0.5, 0.9])
    y = torch.tensor([0, 1, 1, 1])
    # real: d = 0.1; fakes: max(0, .4-.2)=.2 ; inside window [.4,.7] -> 0 ; .5*(.9-.7)=.1
    assert craft_cr_loss(d, y, m=0.4, delta=0.3, gamma=0.5).item() == pytest.approx((0.1 + 0.2 + 0.0 + 0.1) / 4)
    assert craft_total_loss(torch.tensor(1.0), torch.tensor(2.0), 0.5).item() == 2.0


def test_perturbation_eq4_and_bound_eq11():
    torch.manual_seed(0)
    mu = torch.zeros(4, 2, 2)
    z = torch.randn(3, 4, 2, 2)
    zp = perturb_latent(z, mu, lam=0.5, tau=1e9)
    step = (zp - z).flatten(1).norm(dim=1)
    assert torch.allclose(step, torch.full((3,), 0.5), atol=1e-5)           # moved by lam ...
    cos = torch.nn.functional.cosine_similarity((zp - z).flatten(1), (z - mu).flatten(1))
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)                      # ... away from mu
    bounded = perturb_latent(z, mu, lam=0.5, tau=1.0)
    assert (bounded.flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()


def test_power_iteration_matches_the_exact_jacobian_norm(tiny_run, tiny):
    from udet_core.methods.craft import ddim_step_spectral_norm
    _, bench = tiny_run
    m = _model(bench, tiny.craft)
    torch.manual_seed(1)
    x = torch.rand(1, 3, tiny.data.resolution, tiny.data.resolution) * 2 - 1
    z = m.invert(x)
    t, cond = m.timesteps[1], m.base.image_embeddings(x)

    def g(flat):
        zz = flat.view_as(z)
        return m.scheduler.step(m.base.unet(zz, t, encoder_hidden_states=cond).sample, t, zz).prev_sample.flatten()
    exact = torch.linalg.matrix_norm(torch.autograd.functional.jacobian(g, z.flatten()), 2).item()
    assert ddim_step_spectral_norm(m.base.unet, m.scheduler, t, cond, z, iters=40).item() == pytest.approx(exact, rel=0.03)


def test_real_centre_is_the_plain_mean_of_eq2():
    lat = torch.tensor([[1.0, 0.0], [3.0, 2.0], [8.0, 4.0]])
    assert torch.allclose(mean_center(lat), torch.tensor([4.0, 2.0]))      # every image weighs 1/N, the first too


def test_calibrate_threshold_uses_given_scores_only():
    s = np.array([0.1, 0.2, 0.8, 0.9])
    t = calibrate_threshold(s, np.array([0, 0, 1, 1]))
    assert 0.2 < t <= 0.8


@pytest.fixture(scope="module")
def tiny_data(tiny_run):
    run_dir, bench = tiny_run
    images, df, _ = load_images(bench.manifest)
    return bench, images, df


def _model(bench, cfg, seed=0):
    torch.manual_seed(seed)
    return Craft.from_backbone(bench.generators.backbone_path, cfg)


def _fit(m, images, df, val=False):
    """`methods.craft.fit` on the train rows held in memory; with `val`, selected on the val rows from step 0."""
    train, v = (df["split"] == "train").to_numpy(), (df["split"] == "val").to_numpy()
    return fit(m, ArrayDataset(images[train], df[train]), seed=0, progress=False,
               val=(images[v], df["label"].to_numpy()[v]) if val else None).history


def test_early_stopping_keeps_the_weights_of_the_best_validation_step(tiny_data, tiny):
    from sklearn.metrics import roc_auc_score
    bench, images, df = tiny_data
    xv, yv = split_tensors(images, df, "val")
    cfg = replace(tiny.craft, steps=12, eval_every=2, patience=1, lr_cls=0.5, lr_decoder=5e-2)
    m = _model(bench, cfg)
    history = _fit(m, images, df, val=True)
    assert history[0]["step"] == 0 and "craft_loss" not in history[0]   # step 0: the frozen pipeline, a candidate
    steps_run = sum("craft_loss" in h for h in history)
    checks = [h for h in history if "val_auc" in h]
    assert [h["step"] for h in checks] == [0, *range(2, steps_run + 1, 2)]
    best = max(checks, key=lambda h: h["val_auc"])                     # the first of equal ones
    assert checks[-1]["best_step"] == best["step"]
    assert steps_run < cfg.steps   # stopped early, `patience` checks after the best one
    assert sum(h["step"] > best["step"] for h in checks) == cfg.patience and history[-1]["stop"]
    m.eval()
    restored = roc_auc_score(yv.numpy(), m.score(xv).p_fake)
    assert restored == pytest.approx(best["val_auc"], abs=1e-6)


def test_model_selection_keeps_the_frozen_pipeline_when_no_fine_tuned_check_beats_it(tiny_data, tiny):
    """With every learning rate 0, no check can beat step 0 (all are equal): the step kept is 0, not the first
    fine-tuned check (at 8cc9fcb the search started at step 1 from an AUC of -1)."""
    bench, images, df = tiny_data
    cfg = replace(tiny.craft, steps=4, eval_every=2, patience=5, lr_cls=0.0, lr_encoder=0.0, lr_unet=0.0,
                  lr_decoder=0.0)
    m = _model(bench, cfg)
    history = _fit(m, images, df, val=True)
    checks = [h for h in history if "val_auc" in h]
    assert [h["step"] for h in checks] == [0, 2, 4] and checks[-1]["best_step"] == 0
    assert len({round(h["val_auc"], 12) for h in checks}) == 1


def test_p_fake_ranks_images_exactly_as_their_distance_for_any_classifier_weights():
    """The distance classifier (eq. 7-8) cannot invert its signal: for any weights, P(fake) increases with d (at
    8cc9fcb a 1->16->2 MLP started with a negative slope and ranked validation images as 1 - AUC of d)."""
    from udet_core.methods.craft import DistanceClassifier
    d = torch.sort(torch.rand(500, generator=torch.Generator().manual_seed(0)) * 0.2 + 1e-4).values
    for seed in range(20):
        torch.manual_seed(seed)
        cls = DistanceClassifier()
        for q in cls.parameters():
            q.data.normal_(0.0, 3.0)
        logits = cls(d)
        assert (torch.diff(logits[:, 1] - logits[:, 0]) > 0).all(), seed


def test_warm_start_on_frozen_distances_keeps_a_positive_slope():
    """Warm-started on frozen training distances, the classifier separates the classes at its centre; when fakes
    reconstruct *better* (the premise fails), the slope stays positive (the order stays d's)."""
    from udet_core.methods.craft import DistanceClassifier
    g = torch.Generator().manual_seed(0)
    d_real, d_fake = torch.rand(100, generator=g) * 0.01 + 0.01, torch.rand(100, generator=g) * 0.02 + 0.03
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    for d in (torch.cat([d_real, d_fake]), torch.cat([d_fake, d_real])):
        cls = DistanceClassifier()
        cls.warm_start(d, y)
        logit = cls.logit(d)
        assert torch.nn.functional.softplus(cls.raw_slope) > 0 and torch.isfinite(logit).all()
        assert (torch.diff(cls.logit(torch.sort(d).values)) > 0).all()
    cls = DistanceClassifier()
    cls.warm_start(torch.cat([d_real, d_fake]), y)
    acc = ((cls.logit(torch.cat([d_real, d_fake])) > 0).long() == y).float().mean()
    assert acc > 0.95


def test_signal_audit_flags_a_score_that_ranks_against_its_distance():
    from udet_core.methods.craft import signal_audit
    y = np.r_[np.zeros(50), np.ones(50)]
    d = np.r_[np.linspace(0.01, 0.02, 50), np.linspace(0.015, 0.03, 50)]
    assert not signal_audit(y, d * 10, d)["inverted"]
    flagged = signal_audit(y, -d, d)
    assert flagged["inverted"] and flagged["auc"] == pytest.approx(1 - flagged["auc_d"])


def test_only_the_suffix_trains_and_the_base_stays_frozen(tiny_data, tiny):
    bench, images, df = tiny_data
    m = _model(bench, replace(tiny.craft, steps=2, train_encoder=False))
    base_before = {k: v.clone() for k, v in m.base.unet.state_dict().items()}
    enc_before = {k: v.clone() for k, v in m.suffix.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in m.suffix.vae.decoder.state_dict().items()}
    venc_before = {k: v.clone() for k, v in m.suffix.vae.encoder.state_dict().items()}
    _fit(m, images, df)
    assert all(torch.equal(v, m.base.unet.state_dict()[k]) for k, v in base_before.items())
    assert all(torch.equal(v, m.suffix.encoder.state_dict()[k]) for k, v in enc_before.items())  # switched off
    assert all(torch.equal(v, m.suffix.vae.encoder.state_dict()[k]) for k, v in venc_before.items())
    assert any(not torch.equal(v, m.suffix.vae.decoder.state_dict()[k]) for k, v in dec_before.items())
    assert m.suffix.unet is not m.base.unet and m.suffix.encoder is m.base.image_encoder


def test_prefix_cache_is_what_the_suffix_receives(tiny_data, tiny):
    bench, images, df = tiny_data
    x, y = split_tensors(images, df, "val")
    m = _model(bench, tiny.craft)
    m.fit_center(x[y == 0])
    z = prefix_cache(m, x, batch_size=5)
    assert torch.allclose(z, m.prefix(x), atol=1e-5)
    assert z.shape[1:] == (m.base.vae.config.latent_channels, *[tiny.data.resolution // 2] * 2)


def test_premise_check_reports_the_centre_distance_and_the_frozen_distance(tiny_wb, tiny_data, tiny):
    from sklearn.metrics import roc_auc_score
    bench, images, df = tiny_data
    assert np.array_equal(tiny_wb.images, images)          # the workbench holds the same udet-mini rows
    table = premise_check(tiny_wb).drop(columns="distance").set_index(["score", "family"])
    x_train, y_train = split_tensors(images, df, "train")
    x, y = split_tensors(images, df, "test")
    y = y.numpy()
    frozen = _model(bench, replace(tiny.craft, train_encoder=False, train_unet=False, train_decoder=False))
    frozen.fit_center(x_train[y_train == 0])
    r = latent_center_distance(frozen, x)
    d = frozen.score(x).distance           # no prefix cache: recomputed from the images
    for name, s in (("||z_T - mu_real||", r), ("d (frozen, perturbed)", d)):
        row = table.loc[(name, "all fakes")]
        assert row.AUC == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert row.mean_real == pytest.approx(s[y == 0].mean(), rel=1e-4)
        assert row.mean_fake == pytest.approx(s[y == 1].mean(), rel=1e-4)
    assert set(table.xs("d (frozen, perturbed)").index) == set(df.loc[df.label == 1, "family"]) | {"all fakes"}
    # an image whose inverted latent is the centre is at distance 0, the others are not
    frozen.mu = frozen.invert(x[:1])[0]
    r0 = latent_center_distance(frozen, x[:3])
    assert r0[0] < 1e-4 and (r0[1:] > 1e-2).all()


def test_tiny_real_pipeline_folder_trains_unchanged(tmp_path, tiny):
    """A StableDiffusionImageVariationPipeline folder built from diffusers-test-sized configs, saved to disk."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionImageVariationPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=5,
                                                         num_attention_heads=4, image_size=32, intermediate_size=37,
                                                         patch_size=4))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False)
    StableDiffusionImageVariationPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=sched, safety_checker=None,
                                          feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
                                          requires_safety_checker=False).save_pretrained(tmp_path / "sdiv")
    cfg = replace(tiny.craft, steps=2)
    m = Craft.from_backbone(tmp_path / "sdiv", cfg)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    manifest = pd.DataFrame({"label": y.numpy(), "split": "train"})
    hist = fit(m, ArrayDataset(to_uint8(x), manifest), seed=0, progress=False).history
    assert len(hist) == 2 and all(math.isfinite(h["craft_loss"]) for h in hist)
    m.save(tmp_path / "ckpt")
    again = Craft.load(tmp_path / "ckpt")
    assert np.allclose(again.score(x).p_fake, m.eval().score(x).p_fake, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_run, tiny, tiny_data):
    from udet_core.methods.base import fitted
    run_dir, _ = tiny_run
    _, images, df = tiny_data
    return fitted("craft", tiny, run_dir, images, df, seed=0, weights=default_weights(tiny, run_dir)).folder


def test_craft_trained_from_disk_equals_the_in_memory_fit(tiny_run, tiny, tmp_path):
    """CRAFT trained from disk (images read by 2 DataLoader workers) and on the same rows in memory go through one
    path (`methods.craft.fit`: the same batches through the same operations), so the centre is the same and the
    per-step losses and scores agree to float32 rounding: batches assembled in worker processes can round a few
    last bits differently (observed: losses equal at the default threads, 2.4e-7 apart at OMP_NUM_THREADS=1, scores
    3.5e-8 apart; bound 1e-5, about 80 float32 ulps at the losses' scale of 1)."""
    from udet_core.data.dataset import ArrayDataset, open_dataset, split_validation
    from udet_core.data.synthetic import synthetic_tree
    from udet_core.methods.base import fit_detector
    from udet_core.methods.craft import CraftDetector
    run_dir, _ = tiny_run
    synthetic_tree(tmp_path / "t", n_train=32, n_test=4, size=24, progress=False)
    ds = open_dataset(tmp_path / "t", size=tiny.data.resolution)
    ds.manifest = split_validation(ds.manifest, 0.25)
    train, val = ds.subset("train"), ds.subset("val")
    images, rows, _ = train.load()
    w = default_weights(tiny, run_dir)
    streamed = fit_detector(CraftDetector(tiny, run_dir, weights=w), train, val, seed=0, out=tmp_path / "s", workers=2)
    memory = fit_detector(CraftDetector(tiny, run_dir, weights=w), ArrayDataset(images, rows), val, seed=0,
                          out=tmp_path / "m")
    assert torch.equal(streamed.model.mu, memory.model.mu)
    losses = [[h["craft_loss"] for h in d.history if "craft_loss" in h] for d in (streamed, memory)]
    assert len(losses[0]) == len(losses[1]) > 0
    np.testing.assert_allclose(*losses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(streamed.score(images[:8]), memory.score(images[:8]), atol=1e-5, rtol=0)


def test_a_checkpoint_reloads_with_its_own_settings_and_an_older_whole_profile_record_too(tiny_checkpoint, tiny,
                                                                                          tmp_path):
    """`load_detector` rebuilds the profile from the checkpoint's `settings` (profile name, input size, CRAFT's own
    config); a checkpoint written before those records, with the whole profile under `profile`, still loads."""
    import shutil

    from udet_core.core.profiles import config_dict
    from udet_core.methods.base import load_detector
    det = load_detector(tiny_checkpoint)
    assert det.p.name == "tiny" and det.p.craft == tiny.craft and det.p.data.resolution == tiny.data.resolution
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    meta = json.loads((old / "detector.json").read_text())
    meta.pop("settings")
    meta["profile"] = config_dict(tiny)
    (old / "detector.json").write_text(json.dumps(meta))
    again = load_detector(old)
    assert again.p == tiny and again.threshold == det.threshold


def test_a_fitted_craft_detector_ranks_test_images_exactly_as_their_distance(tiny_checkpoint, tiny_data):
    """The detector of `train craft`: P(fake) orders the test images as d does (AUC equal: the classifier is strictly
    increasing in d and evaluated in float64), and its history audits every check from step 0, none inverted."""
    from sklearn.metrics import roc_auc_score

    from udet_core.methods.base import load_detector
    bench, images, df = tiny_data
    det = load_detector(tiny_checkpoint)
    x, y = split_tensors(images, df, "test")
    scores = det.model.score(x)
    p, d = scores.p_fake, scores.distance
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(d, kind="stable"))
    assert roc_auc_score(y, p) == roc_auc_score(y, d)
    checks = [h for h in json.loads((tiny_checkpoint / "craft.json").read_text())["history"] if "val_auc" in h]
    assert checks[0]["step"] == 0 and not any(h["val_inverted"] or h["train_inverted"] for h in checks)
    assert all(h["val_auc"] == h["val_auc_d"] and h["train_auc"] == h["train_auc_d"] for h in checks)


def test_checkpoint_records_threshold_from_validation(tiny_checkpoint):
    meta = json.loads((tiny_checkpoint / "craft.json").read_text())
    assert 0.0 <= meta["threshold"] <= 1.0 and "threshold_fast" in meta
    from safetensors import safe_open
    with safe_open(str(tiny_checkpoint / "craft.safetensors"), "pt") as f:   # only what fine-tuning changed
        prefixes = {k.split(".")[0] for k in f.keys()}
        decoder_side = all(k.startswith(("vae.decoder.", "vae.post_quant_conv.")) for k in f.keys() if k.startswith("vae."))
    expected = {"cls", "mu_real", "mu_real_fast"} | {n for n, on in (("encoder", meta["config"]["train_encoder"]),
                                                                     ("unet", meta["config"]["train_unet"]),
                                                                     ("vae", meta["config"]["train_decoder"])) if on}
    assert prefixes == expected and decoder_side and not (tiny_checkpoint / "pipeline").exists()
    det = json.loads((tiny_checkpoint / "detector.json").read_text())
    assert det["name"] == "craft" and det["threshold"] == meta["threshold"] and det["settings"]["profile"] == "tiny"
    assert det["settings"]["craft"] == meta["config"] and "cnnspot" not in det["settings"]   # its own settings only
    info = json.loads((tiny_checkpoint / "done.json").read_text())
    assert "fit" in info["timings_s"] and info["code_version"]


def test_detect_cli_scores_a_folder_and_lists_bad_files(tmp_path, tiny_checkpoint, tiny_data):
    _, images, _ = tiny_data
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"ok_{i}.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "other_size.png")   # centre-cropped, resized
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.jpg").write_text("hello")
    out = tmp_path / "scores.csv"
    r = subprocess.run([sys.executable, "-m", "udet_core", "detect", str(folder), "--checkpoint", str(tiny_checkpoint),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import pandas as pd
    df = pd.read_csv(out)
    assert sorted(df.path.map(lambda p: p.split("/")[-1])) == ["ok_0.png", "ok_1.png", "ok_2.png", "other_size.png"]
    assert set(df.label) <= {"real", "fake"} and df.score.between(0, 1).all() and set(df.detector) == {"craft"}
    assert "skipped 2 bad file(s)" in r.stdout and "broken.png" in r.stdout and "notes.jpg" in r.stdout


def test_fast_mode_scores(tiny_checkpoint, tiny_data):
    from udet_core.methods.base import load_detector
    _, images, df = tiny_data
    det = load_detector(tiny_checkpoint).uncached()
    full = det.score(images[:4])
    det.fast = True
    fast = det.score(images[:4])
    assert len(full) == len(fast) == 4 and not np.allclose(full, fast)


def test_two_processes_match_one_process(tiny_run, tiny_checkpoint):
    """Two CPU processes (torchrun with ACCELERATE_USE_CPU; `accelerate launch --cpu` starts only one process without
    an MPI hostfile) train the same model as one process (same global batches; DDP averages the two halves'
    gradients), through the same `train craft` command. Stated tolerance: per-step losses within 1e-4 (float
    summation)."""
    import os
    run_dir, _ = tiny_run
    two = run_dir / "craft-2proc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "udet_core", "train", "craft",
           "--data", "udet-mini", "--profile", "tiny", "--run-dir", str(run_dir), "--out", str(two)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained by 2 process(es)" in r.stdout, r.stdout[-2000:]
    h1 = json.loads((tiny_checkpoint / "craft.json").read_text())["history"]
    h2 = json.loads((two / "craft.json").read_text())["history"]
    assert len(h1) == len(h2)
    assert np.allclose([h["craft_loss"] for h in h1 if "craft_loss" in h], [h["craft_loss"] for h in h2 if "craft_loss" in h], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ cache keys: content, not paths or names

def test_craft_cache_key_follows_the_resolved_lpips_backbone(tiny_run, tiny, tiny_checkpoint, tmp_path, monkeypatch):
    """Random and ImageNet LPIPS weights give different distances under one config name: the detector's artifact key
    holds the name the distance resolves to, and a checkpoint refuses to score with another one."""
    import shutil

    from udet_core.core.errors import DataError
    from udet_core.core.profiles import config_hash
    from udet_core.engine import distances
    from udet_core.methods.craft import CraftDetector
    run_dir, _ = tiny_run
    det = CraftDetector(replace(tiny, craft=replace(tiny.craft, distance="lpips-vgg")), run_dir,
                        weights=default_weights(tiny, run_dir))
    random_key = config_hash(det.config())
    monkeypatch.setattr(distances, "imagenet_weights_cached", lambda net="vgg": True)   # weights appear in the cache
    assert config_hash(det.config()) != random_key
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    meta = json.loads((ckpt / "craft.json").read_text())
    meta["config"]["distance"], meta["distance"] = "lpips-vgg", "lpips-vgg-random"      # trained without the weights
    (ckpt / "craft.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="lpips-vgg-random.*refusing to score"):
        Craft.load(ckpt)


def test_backbone_cache_key_is_its_content_not_its_path(tiny_run, tiny, tmp_path):
    """A backbone rebuilt or replaced at the same path changes the keys of the real centre, the frozen prefix and the
    checkpoints trained on it; an untouched one keeps its key (read back from the record beside it)."""
    import shutil

    from udet_core.core.keys import CONTENT_KEY_FILE, content_key
    from udet_core.methods.craft import prefix_key
    _, bench = tiny_run
    folder = tmp_path / "backbone"
    shutil.copytree(bench.generators.backbone_path, folder)
    m = Craft.from_backbone(folder, tiny.craft)
    key, prefix = content_key(folder), prefix_key(m)
    assert (folder / CONTENT_KEY_FILE).is_file() and content_key(folder) == key
    assert Craft.from_backbone(folder, tiny.craft).backbone_key == key
    with torch.no_grad():                                                    # replace the UNet at the same path
        next(m.base.unet.parameters()).add_(0.01)
    m.base.unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    assert content_key(folder) != key
    assert prefix_key(Craft.from_backbone(folder, tiny.craft)) != prefix
    original = Craft.from_backbone(bench.generators.backbone_path, tiny.craft).base
    assert Craft(m.base, tiny.craft).backbone_key != Craft(original, tiny.craft).backbone_key   # in memory: by weights


def test_craft_cache_key_is_its_config_weights_seed_and_rows(tiny_run, tiny, tiny_data, monkeypatch):
    """A fitted CRAFT is keyed by what determines it (`methods.base.detector_artifact`): its config, the backbone's
    content, the seed and the content of its train and val rows; not by udet-mini's benchmark configs (a detector
    trained on other data must not be keyed by them) — a benchmark config that changes the images changes the rows."""
    from udet_core.core.keys import Artifact
    from udet_core.methods.base import detector_artifact
    from udet_core.methods.craft import CraftDetector
    run_dir, bench = tiny_run
    _, images, df = tiny_data
    train, val = (df.split == "train").to_numpy(), (df.split == "val").to_numpy()
    folder = str(bench.generators.backbone_path)      # one folder; its content key is set by hand below

    def run_craft(p, run_dir, seed, progress, images=images):
        return detector_artifact(CraftDetector(p, run_dir, [folder]), images, df, seed, train, val).path

    monkeypatch.setattr(Artifact, "done", property(lambda self: True))      # report the key's folder, train nothing
    backbone = {"content": "weights-1"}                                         # the backbone's content key, by hand
    monkeypatch.setattr("udet_core.methods.craft.detector.content_key", lambda path: backbone["content"])
    base = run_craft(tiny, run_dir, seed=0, progress=False)
    same_rows = [replace(tiny, gan=replace(tiny.gan, nz=tiny.gan.nz + 1)),
                 replace(tiny, pixel=replace(tiny.pixel, steps=tiny.pixel.steps + 1)),
                 replace(tiny, families=replace(tiny.families, sdedit_strength=0.5)), replace(tiny, seed=1)]
    assert {run_craft(p, run_dir, seed=0, progress=False) for p in same_rows} == {base}
    other_pixels = images.copy()
    other_pixels[np.flatnonzero(train)[0], 0, 0, 0] ^= 1                         # one bit of one training image
    others = [run_craft(tiny, run_dir, seed=1, progress=False),
              run_craft(replace(tiny, craft=replace(tiny.craft, lam=tiny.craft.lam + 1)), run_dir, 0, False),
              run_craft(tiny, run_dir, 0, False, images=other_pixels)]
    backbone["content"] = "weights-2"                                           # same configs, other backbone weights
    others.append(run_craft(tiny, run_dir, seed=0, progress=False))
    assert len({base, *others}) == 1 + len(others)


def test_the_backbone_and_distance_are_chosen_on_the_validation_split_only():
    import pandas as pd

    from udet_core.study.craft import choose_pipeline
    rows = [("a", "mse", "val", 0.8), ("a", "mse", "test", 0.2), ("b", "mse", "val", 0.6), ("b", "mse", "test", 0.9),
            ("a", "lpips", "val", 0.7), ("a", "lpips", "test", 0.95)]
    premise = pd.DataFrame([{"backbone": b, "distance": d, "split": s, "family": "all fakes",
                             "score": "d (frozen, perturbed)", "AUC": auc} for b, d, s, auc in rows]
                           + [{"backbone": "b", "distance": None, "split": "val", "family": "all fakes",
                               "score": "||z_T - mu_real||", "AUC": 0.99}])
    assert choose_pipeline(premise) == {"backbone": "a", "distance": "mse", "val_AUC": 0.8}


def test_a_checkpoint_whose_run_dir_and_stand_ins_moved_is_reported_not_retrained(tiny_checkpoint, tmp_path):
    """A checkpoint records the weights it was trained on and its run directory; when both are gone (the run
    directory moved), loading names the missing weights (rc 2 in the CLI) and never re-creates the old folders
    or trains stand-ins there."""
    import json
    import shutil

    from udet_core.core.errors import DataError
    from udet_core.world.weights import reload_detector
    moved = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, moved)
    meta = json.loads((moved / "detector.json").read_text())
    old = tmp_path / "old-run"
    meta["run_dir"] = str(old)
    meta["weights"] = {**meta["weights"], "image_variation": str(old / "artifacts" / "sd-iv" / "pipeline")}
    (moved / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="image_variation weights craft was trained with are gone"):
        reload_detector(moved)
    assert not old.exists()
