"""Decoder-upsampler ablation (paper §4.3): do CRAFT's honeycomb artefacts need transposed convolutions?

The paper blames the periodic (honeycomb / checkerboard) artefacts of collapsed fakes on transposed
convolutions in the VAE decoder. Stable Diffusion's decoder, like the benchmark's stand-in, upsamples with
nearest-neighbour + 3x3 convolution (diffusers `UpDecoderBlock2D` -> `Upsample2D(use_conv=True)`). The ablation
builds the same decoder with `Upsample2D(use_conv_transpose=True)` (ConvTranspose2d, kernel 4, stride 2,
padding 1), trains it to reconstruct real crops (encoder frozen), fine-tunes CRAFT on top of each decoder and
compares the reconstructions of test reals and fakes: periodic-peak scores, mean spectra, distance AUC.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from udet_core.core.io import atomic_write_json, atomic_write_text
from udet_core.core.keys import content_key
from udet_core.core.provenance import Timer
from udet_core.data.dataset import ArrayDataset
from udet_core.data.images import to_uint8
from udet_core.data.properties import log_spectrum, periodic_peak_score
from udet_core.engine.distances import resolved_name
from udet_core.engine.metrics import psnr
from udet_core.engine.train import Objective, fit
from udet_core.methods import craft
from udet_core.methods.craft import Craft, prefix_cache, split_tensors
from udet_core.models.backbones import load_image_variation
from udet_core.models.sampling import vae_roundtrip
from udet_core.world.benchmark import method_artifact
from udet_core.world.trainers import VAEWithKL, generator_pool, vae_loss
from udet_core.world.weights import default_weights

DECODERS = {"nearest": "nearest + conv (SD)", "transposed": "transposed conv (paper's explanation)"}
STAGES = {"frozen": "frozen", "tuned": "CRAFT fine-tuned"}
N_SHOW_REAL = 4   # test reals in the figure (beside one fake per family)


# ------------------------------------------------------------------ the variant decoder

def upsamplers(vae) -> list:
    """The decoder's upsampling layers (diffusers `Upsample2D`), in order."""
    return [u for block in vae.decoder.up_blocks for u in (block.upsamplers or [])]


def transposed_conv_decoder(vae, seed: int = 0):
    """A deep copy of an AutoencoderKL whose decoder upsamplers are `Upsample2D(use_conv_transpose=True)`
    (new random ConvTranspose2d weights, seeded); every other weight, the encoder's included, is copied (§4.3)."""
    from diffusers.models.upsampling import Upsample2D
    out = copy.deepcopy(vae)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for block in out.decoder.up_blocks:
            if block.upsamplers is not None:   # (N, C, h, w) -> (N, C_out, 2h, 2w), the same shapes as nearest + conv
                block.upsamplers = nn.ModuleList(Upsample2D(u.channels, use_conv_transpose=True,
                                                            out_channels=u.out_channels) for u in block.upsamplers)
    return out.to(next(vae.parameters()))


def train_decoder(p, vae, x: torch.Tensor, out_dir=None, progress: bool = True) -> list[dict]:
    """Train `vae`'s decoder in place on crops `x` with `world.trainers.train_vae`'s loss (L1 + L2 + a small KL), the
    encoder frozen and the current decoder weights as start (§4.3 ablation); returns the per-step history."""
    import functools

    cfg = p.upsampler
    vae.requires_grad_(False)
    for module in (vae.decoder, vae.post_quant_conv):
        module.requires_grad_(True)

    loss = functools.partial(vae_loss, kl_weight=p.vae.kl_weight)
    params = [q for q in vae.parameters() if q.requires_grad]
    history = fit({"vae": VAEWithKL(vae)}, [Objective("decoder", loss, [{"params": params}], lr=cfg.lr)], x,
                  steps=cfg.steps, batch_size=cfg.batch_size, seed=p.seed, out_dir=out_dir,
                  checkpoint_every=max(50, cfg.steps // 4), desc="train transposed-conv decoder", progress=progress)
    vae.requires_grad_(False)
    return history


def round_trip_psnr(vae, x: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of the VAE round trip D(E(x)) (`models.sampling.vae_roundtrip`): the decoder's
    quality, measured as notebook 00's fidelity table measures it."""
    with torch.no_grad():
        return float(psnr(x, vae_roundtrip(vae, x)).mean())


# ------------------------------------------------------------------ CRAFT on each decoder

def craft_reconstructions(p, base, images: np.ndarray, df, tuned=None, out_dir=None, progress: bool = False) -> dict:
    """CRAFT (the profile's config and seed) with backbone `base`: fine-tuned on the train rows with early stopping
    on the val rows (as notebook 03's detector), or the already fine-tuned Craft `tuned`; then the test rows are
    reconstructed by the frozen and the fine-tuned pipeline from the same perturbed latents (§4.3 ablation).
    Returns {stage: {"x_hat": uint8 (N, H, W, 3), "d": (N,), "val_psnr_db": the stage decoder's PSNR}, "history"}."""
    cfg = p.craft
    torch.manual_seed(p.seed)
    history = []
    if tuned is None:
        tuned = Craft(base, cfg)
        train, val = (df["split"] == "train").to_numpy(), (df["split"] == "val").to_numpy()
        # cache_dir=None: no centre or prefix latents are shared between the two decoders
        history = craft.fit(tuned, ArrayDataset(images[train], df[train]), seed=p.seed, out_dir=out_dir, cache_dir=None,
                            progress=progress, val=(images[val], df["label"].to_numpy()[val])).history
    models = {"tuned": tuned, "frozen": Craft(base, cfg, mu=tuned.mu)}   # the frozen one keeps the base weights
    models["frozen"].mu_fast = tuned.mu_fast
    x, _ = split_tensors(images, df, "test")
    x_val, y_val = split_tensors(images, df, "val")
    z = prefix_cache(tuned, x, cfg.eval_batch_size)   # (N, C, h, w) entering the last k steps
    out = {"history": history}
    with torch.no_grad():
        for stage in STAGES:
            m = models[stage].eval()
            x_hat = torch.cat([m.suffix(zb, xb) for xb, zb in zip(x.split(cfg.eval_batch_size),
                                                                  z.split(cfg.eval_batch_size))])
            out[stage] = {"x_hat": to_uint8(x_hat), "d": m.distance(x, x_hat).numpy(),
                          "val_psnr_db": round_trip_psnr(m.suffix.vae, x_val[y_val == 0])}
    return out


def reconstruction_scores(images: np.ndarray, y: np.ndarray, d: np.ndarray | None = None) -> dict:
    """Median periodic-peak score (the data card's and notebook 05's) of test reals and fakes and its AUC; with the
    reconstruction distances `d`, their means and AUC (§4.3 ablation)."""
    from sklearn.metrics import roc_auc_score
    peak = periodic_peak_score(images)
    row = {"peak_real": float(np.median(peak[y == 0])), "peak_fake": float(np.median(peak[y == 1])),
           "peak_AUC": float(roc_auc_score(y, peak))}
    if d is not None:
        row.update(d_real=float(d[y == 0].mean()), d_fake=float(d[y == 1].mean()), d_AUC=float(roc_auc_score(y, d)))
    return row


# ------------------------------------------------------------------ the ablation (notebook 05)

def ablation_artifact(p, run_dir):
    """The ablation's cache folder, keyed by its and CRAFT's configs, the distance CRAFT resolves to here, the base
    backbone's content and the benchmark's configs (`world.benchmark.method_artifact`)."""
    backbone = default_weights(p, run_dir, ("image_variation",)).image_variation
    return method_artifact(run_dir, "upsampler-ablation", p, p.upsampler, p.craft, resolved_name(p.craft.distance),
                           content_key(backbone))


def upsampler_ablation(wb, force: bool = False) -> pd.DataFrame:
    """Nearest + conv (SD) vs transposed-conv decoder under CRAFT (paper §4.3) on udet-mini (the variant decoder is
    trained on udet-mini's generator pool): one row per decoder x stage (frozen / CRAFT fine-tuned) with the
    decoder's val-real PSNR, the periodic-peak scores and the distance AUC of the test reconstructions, plus the
    inputs' peak scores. Cached with the spectra and example images."""
    if not wb.embedded:
        raise ValueError(f"the upsampler ablation needs udet-mini's generators; the workbench holds {wb.label}")
    p, run_dir, images, df, progress = wb.p, wb.run_dir, wb.images, wb.df, wb.progress
    art = ablation_artifact(p, run_dir)
    if art.done and not force:
        return pd.read_csv(art.path / "table.csv")
    out, timer = art.begin(), Timer()
    base = load_image_variation(wb.backbone_folder())
    with timer("train_decoder"):
        variant = transposed_conv_decoder(base.vae, p.seed)
        decoder_history = train_decoder(p, variant, generator_pool(p), out / "decoder", progress)
    is_test = (df["split"] == "test").to_numpy()
    inputs, y, family = images[is_test], df["label"].to_numpy()[is_test], df["family"].to_numpy()[is_test]
    rng = np.random.default_rng(p.seed)
    show = np.r_[rng.choice(np.flatnonzero(y == 0), N_SHOW_REAL, replace=False),
                 [rng.choice(np.flatnonzero(family == f)) for f in pd.unique(family[y == 1])]]
    rows = [{"decoder": "none (the inputs)", "stage": "input", **reconstruction_scores(inputs, y)}]
    arrays = {"show_family": family[show].astype(str), "example-input": inputs[show]}
    histories = {"decoder": decoder_history}
    # nearest + conv: notebook 03's CRAFT detector itself (same config, seed, backbone and rows); transposed: the
    # same recipe on the variant decoder
    tuned = {"nearest": wb.fitted("craft", seed=p.seed).model,
             "transposed": None}
    for key, vae in (("nearest", base.vae), ("transposed", variant)):
        with timer(f"craft_{key}"):
            rec = craft_reconstructions(p, replace(base, vae=vae), images, df, tuned[key], out / f"craft-{key}",
                                        progress)
        histories[f"craft_{key}"] = rec.pop("history")
        for stage, r in rec.items():
            rows.append({"decoder": DECODERS[key], "stage": STAGES[stage], "val_psnr_db": r["val_psnr_db"],
                         **reconstruction_scores(r["x_hat"], y, r["d"])})
            spectra = log_spectrum(r["x_hat"])   # (N, H, W)
            arrays.update({f"example-{key}-{stage}": r["x_hat"][show], f"spectrum-{key}-{stage}-all": spectra.mean(0),
                           f"spectrum-{key}-{stage}-real": spectra[y == 0].mean(0),
                           f"spectrum-{key}-{stage}-fake": spectra[y == 1].mean(0)})
    table = pd.DataFrame(rows)
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    np.savez_compressed(out / "arrays.npz", **arrays)
    atomic_write_json(out / "history.json", histories)
    art.commit(timings_s=timer.timings, seed=p.seed)
    return pd.read_csv(art.path / "table.csv")


def ablation_figure(p, run_dir, note: str = "udet-mini, synthetic stand-in"):
    """Inputs and their reconstructions by both decoders, frozen and CRAFT fine-tuned (reals left, one fake per
    family right); per stage, the mean log spectrum of fake minus real reconstructions for each decoder, and of
    the transposed-conv minus the nearest + conv reconstructions (the upsampler's own fingerprint)."""
    import matplotlib.pyplot as plt
    a = np.load(ablation_artifact(p, run_dir).path / "arrays.npz")
    rows = {"input": a["example-input"], **{f"{DECODERS[k]}\n{STAGES[s]}": a[f"example-{k}-{s}"]
                                            for k in DECODERS for s in STAGES}}
    n = len(a["show_family"])
    fig = plt.figure(figsize=(0.8 * n + 7.5, 0.8 * len(rows) + 0.8))
    left, right = fig.subfigures(1, 2, width_ratios=[0.8 * n + 1.4, 5.7])
    axes = left.subplots(len(rows), n, squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for c, fam in enumerate(a["show_family"]):
        axes[0, c].set_title(str(fam), fontsize=7)
    # (stage, panel, H, W): fake - real per decoder, then transposed - nearest over all test images
    diffs = np.stack([[a[f"spectrum-{k}-{s}-fake"] - a[f"spectrum-{k}-{s}-real"] for k in DECODERS]
                      + [a[f"spectrum-transposed-{s}-all"] - a[f"spectrum-nearest-{s}-all"]] for s in STAGES])
    titles = [f"{k}: fake - real" for k in DECODERS] + ["transposed - nearest"]
    sp = right.subplots(len(STAGES), 3, squeeze=False)
    for cols, label in (([0, 1], None), ([2], "mean log power difference")):   # one colour scale per kind
        lim = float(np.abs(diffs[:, cols]).max()) or 1.0
        for (r, s), c in itertools.product(enumerate(STAGES), cols):
            im = sp[r, c].imshow(diffs[r, c], cmap="RdBu_r", vmin=-lim, vmax=lim)
            sp[r, c].set_title(f"{titles[c]}\n{STAGES[s]}", fontsize=7)
            sp[r, c].set_xticks([]), sp[r, c].set_yticks([])
        right.colorbar(im, ax=sp[:, cols].ravel().tolist(), shrink=0.7, label=label)
    fig.suptitle("Decoder upsampler under CRAFT: reconstructions of test images and mean spectrum differences "
                 f"({note})", fontsize=9)
    return fig


def findings(table: pd.DataFrame, n_real: int, n_fake: int) -> pd.DataFrame:
    """The ablation's questions (paper §4.3), each answered from `upsampler_ablation`'s table of this run; an AUC
    counts as above chance only beyond twice its standard error under the null, sqrt((n0 + n1 + 1) / (12 n0 n1))."""
    r = table.set_index(["decoder", "stage"])
    se = float(np.sqrt((n_real + n_fake + 1) / (12 * n_real * n_fake)))
    near, trans = DECODERS["nearest"], DECODERS["transposed"]
    frozen, tuned = STAGES["frozen"], STAGES["tuned"]

    def row(question, answer, numbers):
        return {"question": question, "answer": "yes" if answer else "no", "numbers": numbers}
    return pd.DataFrame([
        row("Do both decoders start from a comparable round trip (PSNR within 2 dB on validation reals)?",
            abs(r.loc[(near, frozen), "val_psnr_db"] - r.loc[(trans, frozen), "val_psnr_db"]) <= 2,
            f"{near} {r.loc[(near, frozen), 'val_psnr_db']:.1f} dB, {trans} {r.loc[(trans, frozen), 'val_psnr_db']:.1f} dB"),
        row("Are transposed convolutions needed for periodic peaks (frozen: transposed-conv reconstructions of reals "
            "more periodic than nearest + conv ones)?",
            r.loc[(trans, frozen), "peak_real"] > r.loc[(near, frozen), "peak_real"],
            f"median peak score of real reconstructions: {near} {r.loc[(near, frozen), 'peak_real']:.2f}, "
            f"{trans} {r.loc[(trans, frozen), 'peak_real']:.2f}"),
        row("After CRAFT fine-tuning, are fakes' reconstructions more periodic than reals' with transposed "
            "convolutions (peak AUC above chance), and more so than with nearest + conv?",
            r.loc[(trans, tuned), "peak_AUC"] > max(0.5 + 2 * se, r.loc[(near, tuned), "peak_AUC"]),
            f"peak AUC: {near} {r.loc[(near, tuned), 'peak_AUC']:.3f}, {trans} {r.loc[(trans, tuned), 'peak_AUC']:.3f} "
            f"(chance 0.5 ± {se:.3f})"),
        row("Is there a collapse to explain (fakes reconstructed worse than reals after fine-tuning, d AUC above "
            "chance)?", max(r.loc[(near, tuned), "d_AUC"], r.loc[(trans, tuned), "d_AUC"]) > 0.5 + 2 * se,
            f"d AUC: {near} {r.loc[(near, tuned), 'd_AUC']:.3f}, {trans} {r.loc[(trans, tuned), 'd_AUC']:.3f} "
            f"(chance 0.5 ± {se:.3f})"),
    ])
