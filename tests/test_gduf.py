"""UniGenDet stage 1 (GDUF): SMSA masks block by block, the Mixture-of-Transformers routing, the paper model's
parameter count against a hand computation, losses, decoding, and a tiny model end to end."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from udet_core.core.profiles import BAGEL_7B_MOT
from udet_core.engine.losses import (
    flow_matching_loss,
    flow_matching_noisy,
    gduf_total_loss,
)
from udet_core.engine.metrics import css, explanation_metrics, parse_verdict, rouge_l
from udet_core.models.unified import (
    ANSWER,
    IMAGE,
    TEXT,
    batch_mask,
    detection_mask,
    generation_mask,
    paper_model_parameters,
    patchify,
    rope_positions,
    unpatchify,
)

N_VAE, N_VIT, N_INS, N_ANS = 4, 3, 2, 3


def blocks(mask, sizes):
    """{(row split, column split): sub-mask} for consecutive splits of the given sizes."""
    edges = np.cumsum([0, *sizes])
    return {(i, j): mask[edges[i]:edges[i + 1], edges[j]:edges[j + 1]]
            for i in range(len(sizes)) for j in range(len(sizes))}


def causal(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


@pytest.mark.parametrize("smsa", [True, False])
def test_detection_mask_every_block(smsa):
    sizes = (N_VAE, N_VIT, N_INS, N_ANS)
    b = blocks(detection_mask(*sizes, smsa=smsa), sizes)
    VAE, VIT, INS, ANS = range(4)
    full = lambda i, j: b[i, j].all()   # noqa: E731
    none = lambda i, j: not b[i, j].any()   # noqa: E731
    # VAE latents: bidirectional among themselves, see nothing else
    assert full(VAE, VAE) and none(VAE, VIT) and none(VAE, INS) and none(VAE, ANS)
    # ViT features: bidirectional among themselves; see the VAE latents only with SMSA; never the text
    assert full(VIT, VIT) and none(VIT, INS) and none(VIT, ANS)
    assert full(VIT, VAE) if smsa else none(VIT, VAE)
    # instruction: causal, sees both image splits (VAE only with SMSA), not the answer
    assert torch.equal(b[INS, INS], causal(N_INS)) and full(INS, VIT) and none(INS, ANS)
    assert full(INS, VAE) if smsa else none(INS, VAE)
    # answer: causal, sees everything before it (VAE only with SMSA)
    assert torch.equal(b[ANS, ANS], causal(N_ANS)) and full(ANS, VIT) and full(ANS, INS)
    assert full(ANS, VAE) if smsa else none(ANS, VAE)


def test_generation_mask_every_block():
    b = blocks(generation_mask(3, 4), (3, 4))
    assert torch.equal(b[0, 0], causal(3)) and not b[0, 1].any()     # caption: causal, never sees the latents
    assert b[1, 0].all() and b[1, 1].all()                            # latents: whole caption, bidirectional


def test_padding_keys_are_hidden_and_every_token_sees_itself():
    block = generation_mask(3, 2)
    valid = torch.tensor([[False, True, True, True, True]])          # a left-padded caption
    m = batch_mask(block, valid)[0]
    assert not m[1:, 0].any() and m[0, 0]                            # nobody else sees the pad; it sees itself
    assert torch.equal(m[1:, 1:], block[1:, 1:])


def test_rope_positions_count_text_tokens_and_one_per_image_split():
    assert rope_positions([(IMAGE, 3), (TEXT, 2), (IMAGE, 2), (TEXT, 1)]).tolist() == [0, 0, 0, 1, 2, 3, 3, 4]


def test_patchify_round_trip():
    z = torch.randn(2, 4, 8, 8)
    t = patchify(z, 2)
    assert t.shape == (2, 16, 16) and torch.equal(t[0, 1], z[0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(unpatchify(t, 2, 4, 8), z)


def hand_count(c) -> dict:
    """BAGEL-style MoT with Qwen2 blocks, SigLIP without its pooling head, by hand."""
    H, I, V, hd = c.hidden_size, c.intermediate_size, c.vocab_size, c.hidden_size // c.num_heads
    kv = c.num_kv_heads * hd
    expert = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H   # q(+b) k,v(+b) o, SwiGLU, 2 RMSNorms
    vH, vI = c.vit_hidden_size, c.vit_intermediate_size
    n_patch = (c.vit_image_size // c.vit_patch_size) ** 2
    vit_layer = 2 * 2 * vH + 4 * (vH * vH + vH) + (vH * vI + vI) + (vI * vH + vH)
    d_lat = c.latent_channels * c.latent_patch_size ** 2
    parts = {"embed_tokens": V * H, "layers": c.num_layers * 2 * expert, "norm": H, "norm_gen": H, "lm_head": V * H,
             "vit": 3 * c.vit_patch_size ** 2 * vH + vH + n_patch * vH + c.vit_layers * vit_layer + 2 * vH,
             "connector": vH * H + H + H * H + H, "vae2llm": d_lat * H + H, "llm2vae": H * d_lat + d_lat,
             "time_embedder": 256 * H + H + H * H + H,
             "det_head": 2 * H + H * (H // 4) + H // 4 + (H // 4) * 2 + 2}
    parts["total"] = sum(parts.values())
    return parts


def test_paper_model_parameter_count_matches_hand_computation():
    counts = paper_model_parameters(with_vae=False)
    hand = hand_count(BAGEL_7B_MOT)
    for name, n in hand.items():
        assert counts[name] == n, name
    assert counts["total"] == 14_588_659_762        # ~14.6 B: two 7B-sized experts share embeddings and LM head


def test_losses_by_equation():
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.allclose(flow_matching_noisy(x0, noise, torch.zeros(3)), x0)
    assert torch.allclose(flow_matching_noisy(x0, noise, torch.ones(3)), noise)
    t, dt = torch.full((3,), 0.3), 1e-3                       # the target velocity is d x_t / dt
    fd = (flow_matching_noisy(x0, noise, t + dt) - flow_matching_noisy(x0, noise, t)) / dt
    assert flow_matching_loss(fd, x0, noise) < 1e-6
    one = torch.tensor(1.0)
    assert gduf_total_loss(one, 2 * one, 3 * one, 0.5, 1.0, 2.0) == 0.5 + 2 + 6


def test_explanation_metrics():
    ref = ["fake. a transposed convolution left a periodic pattern", "real. consistent with a camera"]
    assert parse_verdict("fake. It is a real photograph passed through an autoencoder") == 1
    # only the first word counts: a broken answer that mentions "real crops" is unparsed, not "real"
    assert parse_verdict("the image is real") is None and parse_verdict("cannot tell") is None
    assert parse_verdict("Its energy is within the range of typical real crops") is None
    m = explanation_metrics([1, 0], ref, ref)
    assert m == {"n": 2, "unparsed": 0, "bAcc": 1.0, "F1": 1.0, "ROUGE-L": 1.0, "CSS": pytest.approx(1.0)}
    m = explanation_metrics([1, 0, 1], ref + ["fake. x"], ["fake. a periodic pattern", "fake. a camera", "???"])
    assert m["unparsed"] == 1 and m["bAcc"] == 0.5 and 0 < m["ROUGE-L"] < 1
    assert rouge_l(ref[0], "fake. a periodic pattern") == pytest.approx(2 * (4 / 4 * 4 / 8) / (4 / 4 + 4 / 8))
    assert css("real", "") == 0.0


@pytest.fixture(scope="module")
def tiny_model(tiny):
    from udet_core.methods.gduf import UniGenDet
    from udet_core.models.backbones import build_vae
    torch.manual_seed(0)
    texts = ["real. consistent with a camera 0.12", "fake. a GAN made it 3.4", "a close-up photo of a cat"]
    return UniGenDet.build(tiny.gduf, build_vae(tiny.vae, 16), texts, 16)


def test_generation_expert_reaches_detection_only_through_smsa(tiny_model):
    """Changing the generation expert changes the ViT/text states only when they may see the VAE latents."""
    m = tiny_model.model
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = tiny_model.latents(x)
    ins, ans = tiny_model.instruction(2), torch.full((2, 3), 5)
    valid = torch.ones_like(ans, dtype=torch.bool)
    n_vae = m.image_token_counts()[0]
    before = {s: m.detection(z, x, ins, ans, valid, smsa=s)["states"] for s in (True, False)}
    with torch.no_grad():
        saved = m.layers[0].gen.mlp.down_proj.weight.clone()
        m.layers[0].gen.mlp.down_proj.weight.add_(1.0)
    try:
        after = {s: m.detection(z, x, ins, ans, valid, smsa=s)["states"] for s in (True, False)}
    finally:
        with torch.no_grad():
            m.layers[0].gen.mlp.down_proj.weight.copy_(saved)
    assert torch.allclose(after[False][:, n_vae:], before[False][:, n_vae:], atol=1e-6)
    assert not torch.allclose(after[True][:, n_vae:], before[True][:, n_vae:], atol=1e-3)
    assert not torch.allclose(after[False][:, :n_vae], before[False][:, :n_vae], atol=1e-3)


@pytest.mark.parametrize("smsa", [True, False])
def test_cached_smsa_decoding_equals_full_forward_decoding(tiny_model, smsa):
    """Greedy decoding with the key/value cache gives the tokens and logits of rerunning the whole sequence, with
    SMSA and without it (w/o SMSA, answer tokens must not see the cached VAE latents while decoding either)."""
    tiny_model.cfg = replace(tiny_model.cfg, smsa=smsa)
    try:
        torch.manual_seed(2)
        x = torch.rand(3, 3, 16, 16) * 2 - 1
        prob, _, ans = tiny_model._decode(x, 8)
        cache = [{} for _ in tiny_model.model.layers]
        with torch.no_grad():
            out = tiny_model.detection_prefix(x, cache)
            cached_logits, visible, pos = [out["lm_logits"][:, -1]], out["visible"], out["positions"][:, -1]
            for i in range(ans.shape[1] - 1):
                pos = pos + 1
                logits, visible = tiny_model.model.decode_step(ans[:, i], pos, cache, visible)
                cached_logits.append(logits)
            a = torch.full((3, 1), tiny_model.tokenizer.convert_tokens_to_ids(ANSWER))
            z, ref, full_logits = tiny_model.latents(x), [], []
            for _ in range(ans.shape[1]):
                out = tiny_model.model.detection(z, x, tiny_model.instruction(3), a, torch.ones_like(a, dtype=torch.bool),
                                                 smsa=smsa)
                full_logits.append(out["lm_logits"][:, -1])
                nxt = out["lm_logits"][:, -1].argmax(-1)
                ref.append(nxt)
                a = torch.cat([a, nxt[:, None]], 1)
            head = out["cls_logits"].softmax(-1)[:, 1]
    finally:
        tiny_model.cfg = replace(tiny_model.cfg, smsa=True)
    assert torch.equal(ans, torch.stack(ref, 1))
    assert torch.allclose(torch.stack(cached_logits), torch.stack(full_logits), atol=1e-5)
    assert torch.allclose(prob, head, atol=1e-6)      # later answer tokens never change the head's input


def test_training_rows_follow_the_mix_ratio(tiny_model):
    df = pd.DataFrame({"label": [0] * 6 + [1] * 4, "explanation": ["real. a"] * 6 + ["fake. b"] * 4,
                       "caption": ["a photo of a cat"] * 10})
    images = np.zeros((10, 16, 16, 3), np.uint8)
    _, _, y, _, _, task = tiny_model.training_tensors(images, df, seed=0)
    det = task == 0
    assert (y[det] == 0).sum() == (y[det] == 1).sum() == 6                      # balanced detection rows
    assert (task == 1).sum() == round(tiny_model.cfg.gen_ratio * 12) and (y[task == 1] == 0).all()
    cfg = tiny_model.cfg
    tiny_model.cfg = replace(cfg, gen_ratio=0.0)
    try:
        assert (tiny_model.training_tensors(images, df, seed=0)[-1] == 1).sum() == 0
    finally:
        tiny_model.cfg = cfg


def test_the_base_generator_sees_as_many_generation_samples_as_gduf(tiny):
    """Paper §4.1 trains generation and understanding 1:1; the Table 4 'base' generator trains on generation only,
    for the share of GDUF's steps that GDUF spends on generation rows."""
    from udet_core.core.profiles import get_profile
    from udet_core.methods.gduf import generation_only
    cfg = get_profile("default").gduf
    assert cfg.gen_ratio == 1.0
    base = generation_only(cfg)
    assert base.w_cls == base.w_exp == 0.0 and base.w_gen == cfg.w_gen
    gduf_gen_samples = cfg.steps * cfg.batch_size * cfg.gen_ratio / (1 + cfg.gen_ratio)
    assert base.steps * base.batch_size == pytest.approx(gduf_gen_samples, abs=cfg.batch_size)
    assert generation_only(replace(cfg, gen_ratio=0.2, steps=150)).steps == 25


def test_without_generation_sees_as_many_detection_samples_as_gduf():
    """Table 6's "w/o generation task" at equal detection samples: GDUF's batches hold batch x 1/(1 + gen_ratio)
    detection rows for `steps` steps; the ablation's hold only detection rows, for fewer steps."""
    from udet_core.core.profiles import get_profile
    from udet_core.methods.gduf import without_generation
    for ratio in (1.0, 0.2):
        cfg = replace(get_profile("default").gduf, gen_ratio=ratio)
        wo = without_generation(cfg)
        assert wo.gen_ratio == 0.0 and wo.batch_size == cfg.batch_size and wo.smsa == cfg.smsa
        assert wo.steps * wo.batch_size == pytest.approx(cfg.steps * cfg.batch_size / (1 + ratio), abs=cfg.batch_size)


def test_unigendet_trains_detects_generates_and_reloads(tiny_wb, tiny, tmp_path):
    from udet_core.methods.gduf import UniGenDet, cached_answers
    images, df = tiny_wb.images, tiny_wb.df
    det = tiny_wb.fitted("unigendet", seed=0)
    steps = [h for h in det.history if "gduf" in h]
    assert [h["step"] for h in steps] == list(range(1, tiny.gduf.steps + 1))
    assert all(np.isfinite([h["L_cls"], h["L_exp"], h["L_gen"]]).all() for h in steps)
    # the learning curve starts at step 0 (the model before GDUF: a candidate of model selection) and ends at the last
    checks = [h for h in det.history if "val_auc" in h]
    assert [h["step"] for h in checks] == [0, tiny.gduf.steps] and det.history[0]["step"] == 0
    assert {"train_auc", "val_verdict_auc", "val_L_cls_real", "val_L_cls_fake", "val_unparsed"} <= set(checks[0])
    # selected among the checks whose answers start with a verdict word; none such (tiny's 4 steps): the last step
    eligible = [h["step"] for h in checks if h["val_unparsed"] <= tiny.gduf.max_unparsed]
    assert checks[-1]["best_step"] == (max(eligible, key=lambda s: next(h["val_auc"] for h in checks if h["step"] == s))
                                       if eligible else None)
    assert det.fit_info["chosen_step"] == (checks[-1]["best_step"] if eligible else tiny.gduf.steps)
    x = images[(df["split"] == "test").to_numpy()][:4]
    out = cached_answers(det, x)
    assert list(out.columns) == ["prob_fake", "label", "verdict_log_odds", "explanation"] and len(out) == 4
    # the verdict score is the LM's log-odds of the answer's first word, which is what every reference starts with
    r, f = det.model.verdict_ids
    assert det.model.answer_ids(["real. The image", "fake. A GAN"])[:, 1].tolist() == [r, f] and r != f
    s = det.model.head_and_verdict(x)
    np.testing.assert_allclose(s.verdict, out.verdict_log_odds, rtol=0, atol=1e-9)   # same forward, float64
    assert ((out.prob_fake >= det.threshold).astype(int) == out.label).all()
    again = cached_answers(det, x)                                    # read back from the artifact
    assert again.explanation.tolist() == out.explanation.tolist()
    samples = det.model.generate(["a close-up photo of a cat", "a wide photo"], seeds=[0, 1])
    assert samples.shape == (2, 16, 16, 3) and samples.dtype == np.uint8
    loaded = UniGenDet.load(det.folder)
    assert np.allclose(loaded.probabilities(x), det.model.probabilities(x), atol=1e-6)
    assert np.array_equal(loaded.generate(["a wide photo"], seeds=[3]), det.model.generate(["a wide photo"], seeds=[3]))
    with pytest.raises(Exception, match="unigendet.json"):
        UniGenDet.load(tmp_path)
