"""UniGenDet stage 2 (DIGA): the alignment term reaches the generator, the teacher stays frozen; generation metrics."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from udet_core.engine.metrics import (
    frechet_distance,
    intra_prompt_diversity,
    judged_real_share,
)
from udet_core.methods.diga import Diga, teacher_features
from udet_core.methods.gduf import UniGenDet
from udet_core.models.backbones import build_vae


def tiny_unigendet(tiny, seed=0):
    torch.manual_seed(seed)
    texts = ["real. consistent with a camera 0.12", "fake. a GAN made it 3.4", "a close-up photo of a cat"]
    return UniGenDet.build(replace(tiny.gduf, model=replace(tiny.gduf.model, num_layers=3)), build_vae(tiny.vae, 16),
                           texts, 16)


def generation_batch(ug, n=4):
    torch.manual_seed(5)
    x = torch.rand(n, 3, 16, 16) * 2 - 1
    captions = ug.caption_ids(["a close-up photo of a cat"] * n)
    answers = ug.answer_ids(["real. consistent"] * n)
    return (x, ug.latents(x), torch.zeros(n, dtype=torch.long), answers, captions, torch.ones(n, dtype=torch.long))


def gen_expert_grads(diga, lam):
    diga.cfg = replace(diga.cfg, lam=lam)
    model = diga.student.model
    model.zero_grad()
    diga.projector.zero_grad()
    torch.manual_seed(0)                                  # the same noise and flow times for every call
    total, parts = diga.loss({"model": model, "projector": diga.projector}, generation_batch(diga.student))
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if ".gen." in n and p.grad is not None}, parts


def test_alignment_term_reaches_the_generation_expert(tiny):
    diga = Diga(tiny_unigendet(tiny), replace(tiny.diga, student_layer=2))
    with_align, parts = gen_expert_grads(diga, 0.5)
    without, _ = gen_expert_grads(diga, 0.0)
    assert parts["L_DIGA"] != 0.0
    diff = {n: (with_align[n] - without[n]).abs().max().item() for n in with_align}
    # layers up to l receive gradient from L_DIGA; the layer after l cannot (its states are not aligned)
    assert max(v for n, v in diff.items() if n.startswith(("layers.0.", "layers.1."))) > 1e-6
    assert max(v for n, v in diff.items() if n.startswith("layers.2.")) == 0.0
    # with lambda = 0 the gradient is exactly the flow-matching gradient
    model = diga.student.model
    model.zero_grad()
    torch.manual_seed(0)                                  # the same draws as in gen_expert_grads
    diga.student.step_terms(model, generation_batch(diga.student)).l_gen.backward()
    for n, p in model.named_parameters():
        if n in without:
            assert torch.allclose(p.grad, without[n], atol=1e-7), n


def test_teacher_gets_no_gradient_and_does_not_change(tiny, tmp_path):
    ug = tiny_unigendet(tiny)
    diga = Diga(ug, replace(tiny.diga, student_layer=2, steps=2, batch_size=4, lr=1e-2))
    teacher_before = {n: p.clone() for n, p in diga.teacher.model.named_parameters()}
    student_before = {n: p.clone() for n, p in ug.model.named_parameters()}
    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    import pandas as pd
    df = pd.DataFrame({"label": [0, 1] * 4, "explanation": ["real. a", "fake. b"] * 4, "caption": ["a photo"] * 8})
    history = diga.train(x, df, seed=0, out_dir=tmp_path, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["diga"]) for h in history)
    assert all(p.grad is None and not p.requires_grad for p in diga.teacher.model.parameters())
    assert all(torch.equal(p, teacher_before[n]) for n, p in diga.teacher.model.named_parameters())
    assert any(not torch.equal(p, student_before[n]) for n, p in ug.model.named_parameters())
    f = teacher_features(diga.teacher, torch.rand(2, 3, 16, 16) * 2 - 1, diga.teacher_layer)
    n_latent = ug.model.image_token_counts()[0]
    assert f.shape == (2, n_latent, ug.model.cfg.hidden_size)
    rms = f.pow(2).mean(-1).sqrt()          # RMS-normed ViT states, bilinearly resized: convex mixes of unit-RMS rows
    assert (rms <= 1 + 1e-4).all() and rms.max() > 1 - 1e-4


def test_generation_metrics_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=1e-6)   # same cov: ||d||^2
    with pytest.raises(ValueError, match="rank-deficient"):                   # 3 samples of 3-d features
        frechet_distance(a[:3], a[3:6])
    from udet_core.core.profiles import PROFILES
    for make in PROFILES.values():                                           # every profile's featnet is full rank
        g = make().geneval
        assert g.n_samples > g.feature_dim, g
    same = np.repeat(rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), 4, axis=0)
    mse = lambda x, y: ((x - y) ** 2).flatten(1).mean(1)   # noqa: E731
    assert intra_prompt_diversity([same], mse) == 0.0
    assert intra_prompt_diversity([rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)], mse) > 0.1
    assert judged_real_share([0.1, 0.9, 0.4, 0.6], threshold=0.5) == 0.5


def test_wilson_interval_matches_values_worked_by_hand():
    """95 % Wilson score intervals worked by hand from the formula (z = 1.96): 5/10 -> 0.2366-0.7634 (p = 0.5: centre
    0.5, half-width 1.96 sqrt(0.025 + 0.0096) / 1.384), 0/10 -> 0-0.2775 (3.842 / 13.842); given to 4 digits,
    hence abs=1e-4."""
    from udet_core.engine.metrics import wilson_interval
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    lo, hi = wilson_interval(128, 128)
    assert hi == pytest.approx(1.0) and 0.97 < lo < 1.0


def test_diga_runs_are_cached_and_measured(tiny_wb, tiny):
    from udet_core.study.unigendet import fitted_diga, generation_metrics
    student, history = fitted_diga(tiny_wb, seed=0)
    assert [h["step"] for h in history] == list(range(1, tiny.diga.steps + 1))
    again, _ = fitted_diga(tiny_wb, seed=0)
    x = tiny_wb.images[:4]
    assert np.allclose(again.probabilities(x), student.probabilities(x), atol=1e-6)
    table, out = generation_metrics({"after DIGA": student}, tiny_wb, seed=0)
    assert list(table.columns[:4]) == ["stage", "FID-style", "FID-style, CNNSpot features", "diversity"]
    assert np.isfinite(table[["FID-style", "FID-style, CNNSpot features", "diversity"]].to_numpy()).all()
    assert out["info"]["cnnspot_feature_dim"] == tiny.cnnspot.widths[-1]
    assert out["info"]["features"].startswith(("workbench feature net", "Inception"))
    assert out["info"]["n_samples"] > out["info"]["feature_dim"] == tiny.geneval.feature_dim
    assert out["samples"]["after DIGA"].shape == (tiny.geneval.n_samples, 16, 16, 3)


def test_bootstrap_interval_of_a_mean_matches_the_normal_one_and_needs_three_values():
    """Percentile bootstrap of the mean of 0..9: near the plug-in normal interval 4.5 +- 1.96 * 2.872 / sqrt(10)
    = (2.72, 6.28) (bootstrap resamples use the population sd, 2.872; its Monte-Carlo error at 10,000 resamples is
    ~0.02, the normal approximation's at n = 10 ~0.05: hence abs=0.15); constant values give a point; the same seed
    the same interval; fewer than 3 values none."""
    from udet_core.engine.metrics import bootstrap_mean_interval
    lo, hi = bootstrap_mean_interval(np.arange(10))
    assert (lo, hi) == pytest.approx((2.72, 6.28), abs=0.15)
    assert bootstrap_mean_interval(np.arange(10)) == (lo, hi)
    assert bootstrap_mean_interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(bootstrap_mean_interval([0.1, 0.2])))


def test_paired_differences_give_the_per_seed_difference_and_its_interval():
    """+DIGA - control per seed on a worked table: differences -1, -2, -3 (mean -2, sd 1): the interval lies below
    0 and excludes it; a pair that differs by +-1 alternately does not."""
    import pandas as pd

    from udet_core.study.unigendet import diga_paired
    fid = {"+DIGA": [10, 10, 10], "+GDUF, λ = 0": [11, 12, 13], "+DIGA, teacher before GDUF": [9, 11, 9.5]}
    long = pd.DataFrame([{"stage": st, "seed": s, "FID-style": v[s]} for st, v in fid.items() for s in range(3)])
    t = diga_paired(long).set_index("pair")
    a = t.loc["+DIGA - +GDUF, λ = 0"]
    assert a["per_seed"] == "-1.000 -2.000 -3.000" and a["mean_diff"] == pytest.approx(-2.0)
    assert a["std_diff"] == pytest.approx(1.0) and a["boot_95_high"] < 0 and a["interval_excludes_0"]
    b = t.loc["+DIGA - +DIGA, teacher before GDUF"]
    assert b["boot_95_low"] < 0 < b["boot_95_high"] and not b["interval_excludes_0"]


def test_diga_aligns_to_the_teacher_it_is_given(tiny_wb):
    """The non-detector arm: the same student (the GDUF model) and projector init, but targets from the model before
    GDUF; the GDUF teacher's targets are the student's own features at the start. The two arms train two models."""
    import torch

    from udet_core.methods.diga import Diga, teacher_features
    from udet_core.study.unigendet import fitted_diga, start_model_of
    gduf = tiny_wb.fitted("unigendet", seed=0).model
    x = gduf._pixels(tiny_wb.images[:4])
    torch.manual_seed(0)
    own = Diga(gduf, tiny_wb.p.diga)
    before = start_model_of(tiny_wb, 0)
    torch.manual_seed(0)                                   # as `fitted_diga`: the teacher first, then the seed
    other = Diga(gduf, tiny_wb.p.diga, before)
    f_own = teacher_features(own.teacher, x, own.teacher_layer)
    assert torch.equal(f_own, teacher_features(gduf, x, own.teacher_layer))
    assert not torch.allclose(f_own, teacher_features(other.teacher, x, other.teacher_layer), atol=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(own.projector.parameters(), other.projector.parameters()))
    with pytest.raises(ValueError, match="unknown DIGA teacher"):
        fitted_diga(tiny_wb, seed=0, teacher="shuffled")
    paper, _ = fitted_diga(tiny_wb, seed=0)
    control, _ = fitted_diga(tiny_wb, seed=0, teacher="before GDUF")   # its own artifact, not the paper arm's read back
    assert any(not torch.equal(a, b) for a, b in zip(paper.model.parameters(), control.model.parameters()))


def test_cnnspot_features_are_what_its_head_reads(tiny_wb):
    """`CNNSpot.features` is the penultimate layer: its head applied to them gives the detector's scores."""
    import torch
    det = tiny_wb.fitted("cnnspot", seed=0)
    x = tiny_wb.images[:6]
    f = det.features(x)
    assert f.shape == (6, det.cfg.widths[-1])
    with torch.no_grad():
        p = torch.sigmoid(det.net.head(torch.from_numpy(f))).squeeze(1).numpy()
    assert np.allclose(p, det.score(x), atol=1e-6)
