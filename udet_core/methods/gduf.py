"""UniGenDet stage 1, GDUF: one unified model learns detection with explanation and captioned generation
(DESIGN §4, paper §3.2, App. B).

Detection samples: clean VAE latents | SigLIP features | instruction | answer ("<|answer|>" + explanation + end).
The detection head reads the first answer token (the fixed "<|answer|>" token, so the verdict word is never its
input) and the LM head learns the explanation; the answer's verdict word is what `detect` parses as the text
verdict. Generation samples: caption | noisy latents, trained by flow matching. The mix is `gen_ratio` generation
samples per detection sample. `UniGenDet` wraps model + tokenizer + frozen VAE with `detect`, `generate`,
`save` and `load`; the registry entry "unigendet" scores images by the head's P(fake).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_json, atomic_write_text, checkpoint_meta
from udet_core.core.keys import array_key, content_key
from udet_core.core.profiles import GdufConfig, UnifiedConfig
from udet_core.core.progress import tqdm
from udet_core.core.provenance import PeakRSS
from udet_core.data.dataset import RowExamples, first_per_class, pixels
from udet_core.data.explain import MECHANISM, explain, reference_stats
from udet_core.data.images import to_tensor, to_uint8
from udet_core.engine.losses import (
    flow_matching_loss,
    flow_matching_noisy,
    gduf_cls_loss,
    gduf_explanation_loss,
    gduf_total_loss,
)
from udet_core.engine.metrics import calibrate_threshold
from udet_core.engine.train import ModelSelection, Objective, balanced, fit
from udet_core.methods.base import Detector, register
from udet_core.models.sampling import seeded_noise
from udet_core.models.unified import (
    ANSWER,
    CAPTION_INSTRUCTION,
    INSTRUCTION,
    UnifiedModel,
    build_tokenizer,
    resolve,
)

LATENT_BATCH = 256   # images per VAE encoding of the clean latents


def gduf_config_from_dict(d: dict) -> GdufConfig:
    return GdufConfig(**{**d, "model": UnifiedConfig(**d["model"])})


@dataclass
class StepTerms:
    """One forward of a mixed batch (`UniGenDet.step_terms`): the loss terms and what DIGA reads of the generation."""
    l_cls: torch.Tensor        # eq. 6 on the detection rows (0 without any)
    l_exp: torch.Tensor        # eq. 7 on the detection rows
    l_gen: torch.Tensor        # eq. 5 + 8 (flow matching) on the generation rows (0 without any)
    generation: dict | None    # the generation pass's outputs, with the requested hidden states
    caption_len: int           # caption tokens before the image tokens in those states


@dataclass
class HeadScores:
    """What one forward up to the first answer token gives per image (`UniGenDet.head_and_verdict`)."""
    p_fake: np.ndarray          # (N,) the detection head's P(fake) (eq. 6), the detector's score
    verdict: np.ndarray         # (N,) float64 log p('fake') - log p('real') of the answer's first word (its verdict)
    parsed: np.ndarray          # (N,) bool: the greedy first word is a verdict word ('real' or 'fake')


def batch_strata(data) -> np.ndarray:
    """Each training example's stratum for class-balanced batches (`train.StepBatches`): 0 real and 1 fake detection
    rows, 2 generation rows, of `training_tensors` or `training_examples` (labels 4th from the end, task last)."""
    columns = data if isinstance(data, tuple) else data.columns
    y, task = columns[-4], columns[-1]
    return (2 * task + y * (task == 0)).numpy()


def auc_or_nan(y, s) -> float:
    """ROC AUC, NaN when `y` holds one class (a learning curve's check must not crash on a tiny split)."""
    from sklearn.metrics import roc_auc_score
    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def learning_row(name: str, y: np.ndarray, s: HeadScores) -> dict:
    """One set's point of the learning curve: head AUC, the verdict token's log-odds AUC, the head's L_cls (eq. 6)
    per class, and the share of answers whose first word is no verdict."""
    p = np.clip(s.p_fake.astype(float), 1e-12, 1 - 1e-12)
    return {f"{name}_auc": auc_or_nan(y, p), f"{name}_verdict_auc": auc_or_nan(y, s.verdict),
            f"{name}_L_cls_real": float(-np.log1p(-p[y == 0]).mean()) if (y == 0).any() else float("nan"),
            f"{name}_L_cls_fake": float(-np.log(p[y == 1]).mean()) if (y == 1).any() else float("nan"),
            f"{name}_unparsed": float(1 - s.parsed.mean())}


class UniGenDet:
    """The unified model with its tokenizer and the frozen AutoencoderKL whose latents it reads and writes."""

    def __init__(self, cfg: GdufConfig, model: UnifiedModel, tokenizer, vae):
        self.cfg, self.model, self.tokenizer, self.vae = cfg, model, tokenizer, vae.eval().requires_grad_(False)
        self.threshold, self.verdict_threshold = 0.5, 0.0

    @classmethod
    def build(cls, cfg: GdufConfig, vae, texts, resolution: int) -> "UniGenDet":
        """A random-init model sized by `cfg.model`, with a byte-level BPE trained on `texts`."""
        tok = build_tokenizer(list(texts) + [INSTRUCTION], cfg.vocab_size)
        model_cfg = resolve(cfg.model, len(tok), resolution, vae)
        return cls(replace(cfg, model=model_cfg), UnifiedModel(model_cfg), tok, vae)

    # -- tokens
    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def verdict_ids(self) -> tuple[int, int]:
        """Token ids of the answers' first words 'real' and 'fake' (every explanation starts with its verdict)."""
        return self.ids("real")[0], self.ids("fake")[0]

    def instruction(self, n: int, text: str = INSTRUCTION) -> torch.Tensor:
        return torch.tensor(self.ids(text)).expand(n, -1)

    def answer_ids(self, explanations) -> torch.Tensor:
        """Right-padded '<|answer|> explanation <|endoftext|>' ids, truncated to `max_answer_tokens`."""
        a, eos = self.tokenizer.convert_tokens_to_ids(ANSWER), self.tokenizer.eos_token_id
        rows = [([a] + self.ids(e) + [eos])[:self.cfg.max_answer_tokens] for e in explanations]
        return _pad(rows, self.pad_id, left=False)

    def caption_ids(self, captions) -> torch.Tensor:
        """Left-padded caption ids (so the latents follow the caption at the same relative positions)."""
        return _pad([self.ids(c) or [self.tokenizer.eos_token_id] for c in captions], self.pad_id, left=True)

    @torch.no_grad()
    def latents(self, x: torch.Tensor, batch_size: int = LATENT_BATCH) -> torch.Tensor:
        """Clean VAE latents (posterior mode x scaling factor) of [-1, 1] images."""
        sf = self.vae.config.scaling_factor
        return torch.cat([self.vae.encode(b).latent_dist.mode() * sf for b in x.split(batch_size)])

    # -- training data and loss
    def training_tensors(self, images: np.ndarray, df: pd.DataFrame, seed: int, gen_ratio: float | None = None) -> tuple:
        """(pixels, latents, labels, answers, captions, task) rows: class-balanced detection rows (task 0), then
        `gen_ratio` (default: the config's) x as many generation rows drawn from the reals (task 1). A config
        whose detection weights are both 0 (a generation-only model) gets generation rows only."""
        x = self._pixels(images)
        y = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
        idx, task = self.training_rows(y, seed, gen_ratio)
        return (x[idx], self.latents(x)[idx], y[idx], self.answer_ids(df["explanation"])[idx],
                self.caption_ids(df["caption"])[idx], task)

    def training_rows(self, y: torch.Tensor, seed: int, gen_ratio: float | None = None) -> tuple:
        """(row of each training example, its task) for rows with labels `y` (`training_tensors`)."""
        det = balanced(y)
        reals = torch.nonzero(y == 0).flatten()
        n_gen = int(round((self.cfg.gen_ratio if gen_ratio is None else gen_ratio) * len(det)))
        gen = reals[torch.randint(len(reals), (n_gen,), generator=torch.Generator().manual_seed(seed))]
        if self.cfg.w_cls == 0 and self.cfg.w_exp == 0:
            det = det[:0]
        return torch.cat([det, gen]), torch.cat([torch.zeros(len(det), dtype=torch.long),
                                                  torch.ones(n_gen, dtype=torch.long)])

    def training_examples(self, ds, seed: int, workers: int = 0, progress: bool = False):
        """`training_tensors` of a data set (read from disk, or `ArrayDataset` in memory: one path for both), as a
        data set of examples (`data.dataset.RowExamples`, images turned into pixels at the ViT size by the `transform`
        `training_transform`): the clean latents of every row are computed `LATENT_BATCH` rows at a time (the batches
        of `latents`, so the same numbers as `training_tensors`) through DataLoader workers and held (4 channels at
        1/8 of the side); the images are read back by the workers while training. Returns (examples, the
        (path, problem) of files that could not be read: their examples are left out)."""
        df = ds.manifest
        y = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
        z, ok, problems = None, torch.zeros(len(ds), dtype=torch.bool), []
        for b in tqdm(ds.loader(LATENT_BATCH, workers), desc="UniGenDet latents", disable=not progress):
            problems += b.problems
            if len(b.index):
                zb = self.latents(self._pixels(b.images.numpy()))
                z = torch.zeros((len(ds), *zb.shape[1:])) if z is None else z
                z[b.index], ok[b.index] = zb, True
        idx, task = self.training_rows(y, seed)
        idx, task = idx[ok[idx]], task[ok[idx]]
        return RowExamples(ds, z[idx], y[idx], self.answer_ids(df["explanation"])[idx],
                           self.caption_ids(df["caption"])[idx], task, rows=idx), problems

    def training_transform(self):
        """The `train.fit` transform of `training_examples`: pixels at the ViT input size."""
        from functools import partial

        return partial(pixels, size=self.model.cfg.vit_image_size)

    def pretraining_tensors(self, crops: np.ndarray, captions) -> tuple:
        """Pretraining rows in `step_terms`' layout: each crop once as a captioning row (task 0, its caption as the
        answer) and once as a generation row (task 1)."""
        x = self._pixels(crops)
        n = len(x)
        idx = torch.cat([torch.arange(n), torch.arange(n)])
        task = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
        return (x[idx], self.latents(x)[idx], torch.zeros(2 * n, dtype=torch.long), self.answer_ids(captions)[idx],
                self.caption_ids(captions)[idx], task)

    def pretraining_terms(self, model: UnifiedModel, batch: tuple):
        """(captioning LM loss, flow-matching loss) of a pretraining batch."""
        t = self.step_terms(model, batch, instruction=CAPTION_INSTRUCTION)
        l_cap, l_gen = t.l_exp, t.l_gen
        return l_cap, l_gen

    def step_terms(self, model: UnifiedModel, batch: tuple, hidden_layers=(), instruction: str = INSTRUCTION) -> StepTerms:
        """One forward of the mixed batch: eq. 6 (head cross-entropy) and eq. 7 (explanation LM loss) on the detection
        rows, eq. 5 + 8 (flow matching) on the generation rows (zero where a task has no rows), with the generation
        output's `hidden_layers` states. With the captioning instruction and captions as answers, the detection rows
        are pretraining's understanding task."""
        x, z, y, answers, captions, task = batch
        det, gen = task == 0, task == 1
        det_in = gen_in = None
        if det.any():
            a = _trim(answers[det], self.pad_id, left=False)
            det_in = {"z": z[det], "x": x[det], "instruction": self.instruction(len(a), instruction).to(a.device), "answer": a,
                      "answer_valid": a != self.pad_id, "smsa": self.cfg.smsa}
        if gen.any():
            c = _trim(captions[gen], self.pad_id, left=True)
            x0 = z[gen]
            noise, t = torch.randn_like(x0), torch.rand(len(x0), device=x0.device)
            gen_in = {"caption": c, "caption_valid": c != self.pad_id, "z_t": flow_matching_noisy(x0, noise, t), "t": t,
                      "hidden_layers": hidden_layers}
        out = model(detection=det_in, generation=gen_in)
        l_cls = l_exp = l_gen = z.new_zeros(())
        if det_in is not None:
            a, d = det_in["answer"], out["detection"]
            l_cls = gduf_cls_loss(d["cls_logits"], y[det])
            l_exp = gduf_explanation_loss(d["lm_logits"][:, :-1], a[:, 1:].masked_fill(~det_in["answer_valid"][:, 1:], -100))
        if gen_in is not None:
            l_gen = flow_matching_loss(out["generation"]["velocity"], x0, noise)
        return StepTerms(l_cls, l_exp, l_gen, out["generation"], 0 if gen_in is None else gen_in["caption"].shape[1])

    def loss(self, model: UnifiedModel, batch: tuple):
        """Eq. 9 on one mixed batch. Returns (total, {term: value})."""
        t = self.step_terms(model, batch)
        total = gduf_total_loss(t.l_cls, t.l_exp, t.l_gen, self.cfg.w_cls, self.cfg.w_exp, self.cfg.w_gen)
        return total, {"L_cls": t.l_cls.item(), "L_exp": t.l_exp.item(), "L_gen": t.l_gen.item()}

    def param_groups(self) -> list[dict]:
        """The unified model at `lr`, its detection head at `lr_head` (a fresh head next to pretrained weights)."""
        head = list(self.model.det_head.parameters())
        rest = [q for q in self.model.parameters() if all(q is not h for h in head)]
        return [{"params": rest, "lr": self.cfg.lr}, {"params": head, "lr": self.cfg.lr_head or self.cfg.lr}]

    def learning_check(self, sets: dict):
        """The check of `train.ModelSelection`: `learning_row` of each named set (uint8 images, labels) as the model
        is now (e.g. the validation split and a fixed class-balanced training subset)."""
        def check() -> dict:
            self.model.eval()
            row = {}
            for name, (images, y) in sets.items():
                row.update(learning_row(name, np.asarray(y), self.head_and_verdict(images)))
            self.model.train()
            return row
        return check

    def train(self, data, *, seed: int, out_dir=None, progress: bool = True, checkpoint_every: int = 100,
              workers: int = 0, val=None, probe=None) -> list[dict]:
        """GDUF training (accelerate; checkpoints in `out_dir`, resumed on rerun) on `training_tensors` or
        `training_examples` (read by `workers` DataLoader workers). With `val` = (uint8 images, labels) and
        `cfg.eval_every`, selected on the validation head AUC from step 0 (the model GDUF starts from) on
        (`train.ModelSelection`) among the checks whose answers start with a verdict word (`cfg.max_unparsed`: the
        detector is also an explainer; none such: the last step), the learning curve drawn on `probe` (a training
        subset) beside it; the history then starts with the step-0 check."""
        c = self.cfg
        obj = Objective("gduf", lambda m, b: self.loss(m["model"], b), self.param_groups(), lr=c.lr,
                        weight_decay=c.weight_decay, warmup_steps=c.warmup_steps)
        selection = None
        if val is not None and c.eval_every:
            sets = {"val": val, **({"train": probe} if probe is not None else {})}
            selection = ModelSelection(self.learning_check(sets), {"model": self.model}, every=c.eval_every,
                                       last=c.steps, patience=c.patience,
                                       eligible=lambda row: row["val_unparsed"] <= c.max_unparsed)
        start = [{"step": 0, **selection(0)}] if selection is not None else []   # the model before GDUF
        history = fit({"model": self.model}, [obj], data, steps=c.steps, batch_size=c.batch_size,
                      seed=seed, out_dir=out_dir, checkpoint_every=checkpoint_every, desc="GDUF", progress=progress,
                      accelerator=mixed_task_accelerator(), num_workers=workers, after_step=selection,
                      strata=batch_strata(data),
                      transform=None if isinstance(data, tuple) else self.training_transform())
        if selection is not None and selection.best is not None:
            selection.restore()
        self.model.eval()
        return start + history

    # -- detection
    def probabilities(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """P(fake) from the detection head (one forward up to the first answer token)."""
        return self.head_and_verdict(images, progress).p_fake

    @torch.no_grad()
    def head_and_verdict(self, images: np.ndarray, progress: bool = False) -> HeadScores:
        """From one forward up to the first answer token: the head's P(fake), and the LM head's log-odds of the
        answer's first word (the verdict, 'fake' against 'real') with whether its greedy choice is a verdict word."""
        r, f = self.verdict_ids
        probs, odds, parsed = [], [], []
        for x in tqdm(self._pixels(images).split(self.cfg.eval_batch_size), desc="UniGenDet head", disable=not progress):
            out = self.detection_prefix(x)
            probs.append(out["cls_logits"].softmax(-1)[:, 1])
            logp = out["lm_logits"][:, -1].double().log_softmax(-1)     # (B, vocab): the word after <|answer|>
            odds.append(logp[:, f] - logp[:, r])
            parsed.append(torch.isin(logp.argmax(-1), torch.tensor([r, f])))
        return HeadScores(torch.cat(probs).numpy(), torch.cat(odds).numpy(), torch.cat(parsed).numpy())

    @torch.no_grad()
    def features(self, images: np.ndarray) -> dict:
        """What the model holds of each image before any head, for linear probes (N, D) each: the final state at the
        answer token (what the detection head reads), the mean of the SigLIP tokens after the connector, and the
        clean VAE latents."""
        out = {"answer-token state": [], "pooled ViT tokens": [], "VAE latents": []}
        for x in self._pixels(images).split(self.cfg.eval_batch_size):
            d = self.detection_prefix(x)
            out["answer-token state"].append(d["states"][:, -1])               # (B, H): the <|answer|> position
            out["pooled ViT tokens"].append(self.model.vit_tokens(x).mean(1))   # (B, H)
            out["VAE latents"].append(self.latents(x).flatten(1))              # (B, C * g * g)
        return {k: torch.cat(v).numpy() for k, v in out.items()}

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        return to_tensor(images, size=self.model.cfg.vit_image_size)

    def detection_prefix(self, x: torch.Tensor, cache: list | None = None, hidden_layers=()) -> dict:
        """The model's detection output for images `x` up to the first answer token (the fixed "<|answer|>")."""
        a = torch.full((len(x), 1), self.tokenizer.convert_tokens_to_ids(ANSWER), device=x.device)
        return self.model.detection(self.latents(x), x, self.instruction(len(x)).to(x.device), a,
                                    torch.ones_like(a, dtype=torch.bool), smsa=self.cfg.smsa,
                                    hidden_layers=hidden_layers, cache=cache)

    def _decode(self, x: torch.Tensor, max_new: int):
        """Head probability, the verdict word's log-odds and greedy answer ids (with a key/value cache), stopping when
        every answer has ended."""
        cache = [{} for _ in self.model.layers]
        out = self.detection_prefix(x, cache)
        prob, logits, pos = out["cls_logits"].softmax(-1)[:, 1], out["lm_logits"][:, -1], out["positions"][:, -1]
        r, f = self.verdict_ids
        logp = logits.double().log_softmax(-1)
        odds = logp[:, f] - logp[:, r]
        visible = out["visible"]
        eos, ans, done = self.tokenizer.eos_token_id, [], torch.zeros(len(x), dtype=torch.bool)
        for _ in range(max_new):
            nxt = logits.argmax(-1).masked_fill(done, self.pad_id)
            ans.append(nxt)
            done |= nxt == eos
            if done.all():
                break
            pos = pos + 1
            logits, visible = self.model.decode_step(nxt, pos, cache, visible)
        return prob, odds, torch.stack(ans, 1)

    @torch.no_grad()
    def detect(self, images: np.ndarray, max_new_tokens: int | None = None, progress: bool = False) -> pd.DataFrame:
        """Per image: P(fake) from the head, the head's label at the stored threshold, the verdict word's log-odds
        (log p('fake') - log p('real'), a score with its own validation threshold) and the explanation decoded
        greedily from the LM head (the paper samples with nucleus sampling; greedy keeps runs reproducible). The
        answer's own real/fake verdict is `metrics.parse_verdict(explanation)`."""
        max_new = max_new_tokens or self.cfg.max_answer_tokens - 1
        eos, rows = self.tokenizer.eos_token_id, []
        for x in tqdm(self._pixels(images).split(self.cfg.eval_batch_size), desc="UniGenDet detect",
                      disable=not progress):
            prob, odds, ans = self._decode(x, max_new)
            for p, o, ids in zip(prob.tolist(), odds.tolist(), ans.tolist()):
                text = self.tokenizer.decode([i for i in ids if i not in (eos, self.pad_id)]).strip()
                rows.append({"prob_fake": p, "label": int(p >= self.threshold), "verdict_log_odds": o,
                             "explanation": text})
        return pd.DataFrame(rows)

    # -- generation
    @torch.no_grad()
    def generate(self, prompts, seeds, steps: int | None = None) -> np.ndarray:
        """Integrate the flow ODE dx/dt = v(x, t | caption) from noise (t=1) to data (t=0) with Euler steps
        (`gen_steps`, paper 50), decode with the VAE; returns uint8 images (N, H, W, 3)."""
        m = self.model.cfg
        cap = self.caption_ids(prompts)
        z = seeded_noise((m.latent_channels, m.latent_grid, m.latent_grid), seeds)
        ts = torch.linspace(1.0, 0.0, (steps or self.cfg.gen_steps) + 1)
        for t, t_next in zip(ts[:-1], ts[1:]):
            v = self.model.generation(cap, cap != self.pad_id, z, t.expand(len(z)))["velocity"]
            z = z + (t_next - t) * v
        return to_uint8(self.vae.decode(z / self.vae.config.scaling_factor).sample)

    # -- persistence
    def save(self, folder, extra: dict | None = None) -> Path:
        """model.safetensors + unigendet.json (configs, threshold) + tokenizer/ + vae/: a self-contained folder."""
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / "model.safetensors"))
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        self.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        atomic_write_json(folder / "unigendet.json", {"config": asdict(self.cfg), "threshold": self.threshold,
                                                      "verdict_threshold": self.verdict_threshold, **(extra or {})})
        return folder

    @classmethod
    def load(cls, folder) -> "UniGenDet":
        from diffusers import AutoencoderKL
        from safetensors.torch import load_file
        from transformers import PreTrainedTokenizerFast
        folder = Path(folder)
        meta = checkpoint_meta(folder, "unigendet.json", "UniGenDet")
        cfg = gduf_config_from_dict(meta["config"])
        model = UnifiedModel(cfg.model)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        ug = cls(cfg, model.eval(), PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer")),
                 AutoencoderKL.from_pretrained(str(folder / "vae")))
        ug.threshold, ug.verdict_threshold = meta["threshold"], meta.get("verdict_threshold", 0.0)
        return ug


def pretraining_texts(crops: np.ndarray, captions) -> list[str]:
    """What the pretrained tokenizer learns from: the captions, the instructions, and explanation templates of every
    family (evidence measured on the crops), so that GDUF's answers tokenise as compactly as its captions."""
    ref = reference_stats(crops)
    return [*captions, INSTRUCTION, CAPTION_INSTRUCTION,
            *[t for fam in ("real", *MECHANISM) for t in explain(crops[:64], fam, ref)]]


def pretrain_unified(cfg: GdufConfig, vae, crops: np.ndarray, captions, *, resolution: int, seed: int, out_dir=None,
                     progress: bool = True) -> tuple[UniGenDet, list[dict]]:
    """Pretrain the unified model before GDUF, as UniGenDet starts from BAGEL: understanding (caption the image, the
    LM loss of eq. 7 with the captioning instruction) and generation (flow matching, eq. 5 + 8) on captioned crops,
    one row of each per crop; the detection head stays untrained. `cfg.pretrain_steps` of `cfg.pretrain_batch_size` at
    `cfg.pretrain_lr`."""
    torch.manual_seed(seed)
    ug = UniGenDet.build(cfg, vae, pretraining_texts(crops, captions), resolution)
    data = ug.pretraining_tensors(crops, captions)

    def loss(m, batch):
        l_cap, l_gen = ug.pretraining_terms(m["model"], batch)
        return l_cap + l_gen, {"L_caption": l_cap.item(), "L_gen": l_gen.item()}

    obj = Objective("pretrain", loss, [{"params": ug.model.parameters()}], lr=cfg.pretrain_lr)
    history = fit({"model": ug.model}, [obj], data, steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch_size, seed=seed,
                  out_dir=out_dir, checkpoint_every=250, desc="pretrain unified model", progress=progress,
                  accelerator=mixed_task_accelerator())
    ug.model.eval()
    return ug, history


def from_pretrained(cfg: GdufConfig, folder) -> UniGenDet:
    """The pretrained unified model (zoo) with `cfg`'s training settings; its model config and tokenizer are kept."""
    ug = UniGenDet.load(folder)
    if resolve_free(cfg.model) != resolve_free(ug.cfg.model):
        raise ValueError(f"{folder}: pretrained with model config {ug.cfg.model}, the profile asks for {cfg.model}")
    ug.cfg = replace(cfg, model=ug.cfg.model)
    ug.model.train()
    return ug


def resolve_free(m: UnifiedConfig) -> UnifiedConfig:
    """A model config without the sizes that `resolve` fills from the data (vocabulary, image and latent sizes)."""
    return replace(m, vocab_size=None, vit_image_size=None, latent_channels=0, latent_grid=None)


def generation_only(cfg: GdufConfig) -> GdufConfig:
    """The 'base' generator of paper Table 4: the same model trained on generation alone, on as many generation
    samples as GDUF gives its generation rows (steps x gen_ratio / (1 + gen_ratio) batches), so the stages compare
    at equal generation training."""
    share = cfg.gen_ratio / (1 + cfg.gen_ratio)
    return replace(cfg, w_cls=0.0, w_exp=0.0, steps=max(1, round(cfg.steps * share)))


def without_generation(cfg: GdufConfig) -> GdufConfig:
    """The "w/o generation task" ablation of paper Table 6 at equal detection samples: no generation rows, and as
    many steps as make the detection rows of GDUF (steps x 1 / (1 + gen_ratio) batches); with GDUF's step count it
    would see 1 + gen_ratio times the detection samples, confounding "no generation" with "more detection"."""
    return replace(cfg, gen_ratio=0.0, steps=max(1, round(cfg.steps / (1 + cfg.gen_ratio))))


def mixed_task_accelerator():
    """An Accelerator whose DistributedDataParallel tolerates weights a step does not use (a process's share of a
    mixed batch may hold no generation rows, or no detection rows)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    return Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)])


def _pad(rows: list[list[int]], pad: int, left: bool) -> torch.Tensor:
    n = max(len(r) for r in rows)
    return torch.tensor([[pad] * (n - len(r)) + r if left else r + [pad] * (n - len(r)) for r in rows])


def _trim(ids: torch.Tensor, pad: int, left: bool) -> torch.Tensor:
    """Drop the columns that are padding in every row (right-padded answers, left-padded captions)."""
    used = (ids != pad).any(0).nonzero().flatten()
    return ids[:, used.min():] if left else ids[:, :used.max() + 1]


# ------------------------------------------------------------------ registry entry

@register("unigendet")
class UniGenDetDetector(Detector):
    """UniGenDet (GDUF stage) in the common protocol: trained on the given rows with their explanations and
    captions; the detection head's P(fake) is the score. The saved folder is a complete UniGenDet checkpoint."""

    config_section = "gduf"
    published_size = 224   # the smallest SigLIP input of its detection patching (paper, supp.: min 224)

    def __init__(self, p, run_dir, backbone=None, weights=None):
        super().__init__(p, run_dir, backbone, weights)
        self.model, self.history = None, []

    needs_explanations = True
    weights_needed = ("unified", "vae")   # fine-tunes `unified` when handed one; else builds on `vae` from scratch

    def config(self):
        if self.weights.unified:
            return {"gduf": asdict(self.cfg), "pretrained": content_key(self.weights.unified)}
        return {"gduf": asdict(self.cfg), "vae": content_key(self.weights.folder("vae", self.name))}

    def fit(self, train, *, seed, out_dir, progress=False, val=None, workers=0):
        df = train.manifest
        missing = int((df["explanation"].fillna("") == "").sum())
        if missing:
            raise DataError("training rows", f"UniGenDet learns to explain: {missing} of {len(df)} rows have no "
                                             "explanation (udet-mini and FakeClue JSON have them; folder layouts do not)")
        self.model = self.start_model(df, seed)
        val_images, val_df, problems = val.load(progress=progress, num_workers=workers) if val is not None else (None, None, [])
        self.bad_files += [{"path": str(q), "problem": why} for q, why in problems]
        with PeakRSS() as mem:
            data, problems = self.model.training_examples(train, seed, workers, progress)
            self.bad_files += [{"path": str(q), "problem": why} for q, why in problems]
            self.history = self.model.train(data, seed=seed, out_dir=out_dir, progress=progress, workers=workers,
                                            val=None if val is None else (val_images, val_df["label"].to_numpy()),
                                            probe=training_probe(train, workers))
        steps = [h for h in self.history if "gduf" in h]
        final = steps[-1] if steps else {}
        # per step of this call's training (a fit resumed from a checkpoint ran fewer steps: then an underestimate)
        return {**{k: final.get(k) for k in ("gduf", "L_cls", "L_exp", "L_gen", "wall_s")},
                "s_per_step": round(final.get("wall_s", 0.0) / max(1, len(steps)), 4),
                "train_peak_rss_mb": round(mem.peak_mb), **selected(self.history)}

    def start_model(self, df: pd.DataFrame, seed: int) -> UniGenDet:
        """The model GDUF starts from (step 0 of its learning curve): the pretrained unified model when handed one,
        as the paper fine-tunes BAGEL, else a fresh one whose tokenizer learns `df`'s texts; either way the detection
        head is initialised afresh from `seed` (the zoo model's head never trained, and seeds must not share one)."""
        torch.manual_seed(seed)
        if self.weights.unified:
            ug = from_pretrained(self.cfg, self.weights.unified)
        else:
            from diffusers import AutoencoderKL
            vae = AutoencoderKL.from_pretrained(str(self.weights.folder("vae", self.name)))
            texts = list(df["explanation"]) + list(df.loc[df["label"] == 0, "caption"])
            ug = UniGenDet.build(self.cfg, vae, texts, self.p.data.resolution)
        torch.manual_seed(seed)
        for m in ug.model.det_head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return ug

    def parameter_count(self) -> int:
        """Parameters of the unified model."""
        return sum(q.numel() for q in self.model.model.parameters())

    def score(self, images, *, progress=False):
        return self.model.probabilities(images, progress=progress)

    def calibrate(self, val, *, progress=False, workers=0):
        """The head's threshold and the verdict log-odds' threshold, both on the validation split."""
        images, df, _ = val.load(progress=progress, num_workers=workers)
        s = self.model.head_and_verdict(images, progress)
        y = df["label"].to_numpy()
        self.threshold = self.model.threshold = calibrate_threshold(np.asarray(s.p_fake, float), y)
        self.model.verdict_threshold = calibrate_threshold(s.verdict, y)

    def save(self, folder):
        self.model.save(folder, {"history": self.history})

    @classmethod
    def load(cls, folder, p, run_dir):
        det = cls(p, run_dir)
        det.model = UniGenDet.load(folder)
        det.history = checkpoint_meta(folder, "unigendet.json", "UniGenDet").get("history", [])
        return det


GDUF_PROBE_PER_CLASS = 32   # training images per class on which the learning curve is drawn beside validation


def training_probe(train, workers: int = 0):
    """(uint8 images, labels) of a fixed class-balanced subset of the training rows (the first of each class)."""
    y = train.manifest["label"].to_numpy()
    keep = first_per_class(y, GDUF_PROBE_PER_CLASS)
    images, index = [], []
    for b in train.loader(64, workers, rows=keep):
        images.append(b.images.numpy()), index.append(b.index.numpy())
    index = np.concatenate(index)
    return np.concatenate(images), y[index]


def selected(history: list[dict]) -> dict:
    """Which step model selection kept (0: the model GDUF started from) and the validation head / verdict AUC there
    and at step 0; empty without validation checks."""
    checks = [h for h in history if "val_auc" in h]
    if not checks:
        return {}
    chosen = checks[-1]["best_step"]
    if chosen is None:   # no check was a candidate: the weights training left
        chosen = max(h["step"] for h in history)
    kept = next((h for h in checks if h["step"] == chosen), checks[-1])
    return {"chosen_step": chosen, **{f"{name}_{k}": h[k] for name, h in (("step0", checks[0]), ("chosen", kept))
                                      for k in ("val_auc", "val_verdict_auc")}}


def cached_answers(det: UniGenDetDetector, images: np.ndarray, progress: bool = False) -> pd.DataFrame:
    """`det.model.detect(images)` (head probability + decoded explanation), kept in the fitted detector's folder
    under a hash of the images, like `methods.base.cached_scores`."""
    path = Path(det.folder) / "answers" / f"{array_key(images)}.csv"
    if path.is_file():
        return pd.read_csv(path, keep_default_na=False)
    out = det.model.detect(images, progress=progress)
    atomic_write_text(path, out.to_csv(index=False))
    return out


