"""One training loop for every model in the workbench, written with HF `accelerate`.

The same code runs on CPU, one GPU, or `accelerate launch` over many processes. Each step draws its batch
indices from a generator seeded by (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would, and N processes split the very batch that one process would see. The examples stream from any
map-style data set through a DataLoader (workers read, decode and augment while the model trains; an in-memory
tensor is just one such data set), and each example's random augmentation is drawn from (seed, step, position in
the global batch), so it too is the same for 1 or N processes and for any number of workers. State (model weights
as safetensors, optimizers, RNG) is saved with `Accelerator.save_state` every `checkpoint_every` steps and
training resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from udet_core.core.io import atomic_write_json
from udet_core.core.progress import tqdm


@dataclass
class Objective:
    """One optimiser and the loss it minimises: `loss(modules, batch) -> scalar tensor`, or `(scalar, parts)`
    where `parts` (name -> float) are logged beside it (e.g. the terms of a weighted sum).

    `params` are torch parameter groups (each may carry its own `lr`): differential learning rates. With
    `warmup_steps`, every group's rate rises linearly from 1/warmup_steps of it to all of it over the first steps.
    Several objectives (e.g. a GAN's D and G) are stepped in order on the same batch.
    """
    name: str
    loss: Callable[[dict, torch.Tensor], torch.Tensor]
    params: list
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    scheduler: object = field(default=None, repr=False)


class ModelSelection:
    """Model selection on a validation split from step 0, the `after_step` of `fit`: the model as it starts (frozen,
    pretrained or freshly initialised) is a candidate like every later check. `check()` returns the metrics of the
    model as it is now (e.g. `val_auc`, and a training subset's beside it for the learning curve); at step 0, every
    `every` steps and at the `last` one, the parameters that train are kept when `check()[metric]` beats every
    earlier check (ties keep the earlier step, so the start wins unless a trained check beats it), and training stops
    after `patience` checks without improvement. `eligible(row)`, when given, says which checks are candidates at
    all (e.g. a model that must also answer in words); none eligible: nothing is kept (`best_step` None) and the
    model stays as training left it. `restore()` loads the kept parameters; `best_step` says which."""

    def __init__(self, check: Callable[[], dict], modules: dict, *, every: int, last: int, patience: int,
                 metric: str = "val_auc", eligible: Callable[[dict], bool] | None = None):
        self.check, self.modules, self.every, self.last, self.patience = check, modules, every, last, patience
        self.metric, self.eligible = metric, eligible
        self.best_value, self.best_step, self.best, self.bad = -math.inf, None, None, 0

    def __call__(self, step: int, mods: dict | None = None) -> dict | None:
        if step and step % self.every and step != self.last:
            return None
        row = self.check()
        if (self.eligible is None or self.eligible(row)) and row[self.metric] > self.best_value:   # NaN never improves
            self.best_value, self.best_step, self.bad = row[self.metric], step, 0
            self.best = {k: {n: q.detach().clone() for n, q in m.named_parameters() if q.requires_grad}
                         for k, m in self.modules.items()}
        else:
            self.bad += 1
        return {**row, "best_step": self.best_step, "stop": self.bad >= self.patience}

    def restore(self) -> None:
        """Load the parameters of the best check (only those that train were kept)."""
        for k, m in self.modules.items():
            m.load_state_dict(self.best[k], strict=False)


def stratum_counts(sizes, batch_size: int) -> np.ndarray:
    """Positions of a batch of `batch_size` per stratum of `sizes` rows: proportional, the remainder to the largest
    fractions (ties to the first stratum), so equal strata always get equal shares and the counts sum to the batch."""
    sizes = np.asarray(sizes, dtype=float)
    exact = batch_size * sizes / sizes.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[:batch_size - counts.sum()]] += 1
    return counts


class StepBatches(torch.utils.data.Sampler):
    """The batches of steps `start` .. `steps - 1`: step s draws its global batch of `batch_size` positions in
    `rows` (default: every example) from a generator seeded by (seed, s), the same on every process; process `rank`
    takes every world-th of them. With `strata` (a label per entry of `rows`, e.g. real / fake / generation), each
    batch holds each stratum's proportional share exactly (`stratum_counts`; in expectation only without), drawn
    with replacement within the stratum. Yields, per step, [(example index, (seed, s, position in the global batch))]."""

    def __init__(self, rows, batch_size: int, seed: int, start: int, steps: int, rank: int = 0, world: int = 1,
                 strata=None):
        self.rows, self.batch_size, self.seed, self.start, self.steps = rows, batch_size, seed, start, steps
        self.rank, self.world, self.groups = rank, world, None
        if strata is not None:
            strata = np.asarray(strata)
            self.groups = [torch.from_numpy(np.flatnonzero(strata == v)) for v in np.unique(strata)]
            self.counts = stratum_counts([len(g) for g in self.groups], batch_size)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def draw(self, g: torch.Generator) -> torch.Tensor:
        """One global batch: positions in `rows`."""
        if self.groups is None:
            return torch.randint(0, len(self.rows), (self.batch_size,), generator=g)
        return torch.cat([grp[torch.randint(0, len(grp), (int(n),), generator=g)]
                          for grp, n in zip(self.groups, self.counts)])

    def __iter__(self):
        for step in range(self.start, self.steps):
            draw = self.draw(torch.Generator().manual_seed(self.seed * 1_000_003 + step))
            yield [(int(self.rows[int(draw[i])]), (self.seed, step, i))
                   for i in range(self.rank, self.batch_size, self.world)]


class Draws(torch.utils.data.Dataset):
    """`data[index]`, augmented by `transform(example, rng)` with a generator seeded by the draw's key; an example
    that could not be read (a dict with `problem` = (path, reason)) passes through to be reported and skipped."""

    def __init__(self, data, transform=None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, draw):
        index, key = draw
        example = self.data[index]
        if self.transform is None or isinstance(example, dict):
            return example
        return self.transform(example, np.random.default_rng(key))


def collate_examples(examples: list):
    """(stacked tuple of the examples that loaded, [(path, problem)] of those that did not)."""
    from torch.utils.data import default_collate
    good = [e for e in examples if not isinstance(e, dict)]
    return (default_collate(good) if good else None), [e["problem"] for e in examples if isinstance(e, dict)]


def fit(modules: dict, objectives: list[Objective], data, *, steps: int, batch_size: int,
        seed: int, out_dir=None, checkpoint_every: int = 0, desc: str = "train", progress: bool = True,
        accelerator: Accelerator | None = None, after_step: Callable[[int, dict], dict | None] | None = None,
        rows=None, strata=None, transform=None, num_workers: int = 0) -> list[dict]:
    """Train `modules` for `steps` steps; returns the per-step history [{'step', '<objective>': loss, ...}].

    `batch_size` is the global batch: with N processes each takes batch_size/N of the same draw, so gradients
    (averaged by DDP) equal those of one process on the whole batch.

    `data` is a map-style data set whose examples are tuples of tensors (a dict with `problem` = (path, reason) for
    one that could not be read: reported once and skipped), or an in-memory tensor / tuple of tensors indexed
    together. Steps draw from `rows` (indices into `data`, e.g. `balanced`; default all; with `strata`, a label per
    row, every batch holds each stratum's share: `StepBatches`), each drawn example
    passes through `transform(example, rng)` (a per-draw generator), and `num_workers` DataLoader workers prepare
    the batches ahead. With `out_dir` and `checkpoint_every > 0`, state is checkpointed to `out_dir/checkpoint`
    and a rerun resumes from it. Under several processes, batch norm layers normalise over the global batch
    (`global_batchnorm`), so 1 and N processes train the same model.

    `after_step(step, modules)` (e.g. a validation check) may return a dict that is logged with the step; a true
    `"stop"` in it ends training there (early stopping).
    """
    acc = accelerator or Accelerator()
    set_seed(seed + acc.process_index)
    if acc.num_processes > 1:
        for m in modules.values():
            global_batchnorm(m)
    names = list(modules)
    prepared = acc.prepare(*[modules[k] for k in names])
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    mods = dict(zip(names, prepared))
    for obj in objectives:
        obj.optimizer = acc.prepare(torch.optim.AdamW(obj.params, lr=obj.lr, weight_decay=obj.weight_decay))
        if obj.warmup_steps:   # linear warmup, one scheduler step per global step (not prepared: accelerate would
            w = obj.warmup_steps   # step it once per process); saved and resumed with the state
            inner = getattr(obj.optimizer, "optimizer", obj.optimizer)
            obj.scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: min(1.0, (s + 1) / w))
            acc.register_for_checkpointing(obj.scheduler)
    if isinstance(data, (torch.Tensor, tuple)):
        data = torch.utils.data.TensorDataset(*(data if isinstance(data, tuple) else (data,)))
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)

    start, history = 0, []
    ckpt = Path(out_dir) / "checkpoint" if out_dir is not None else None
    if ckpt is not None and (ckpt / "state.json").exists():
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / "state.json").read_text())
        start, history = state["step"], state["history"]
        acc.print(f"{desc}: resumed from {ckpt} at step {start}")

    for m in mods.values():
        m.train()
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        Draws(data, transform), collate_fn=collate_examples, num_workers=num_workers,
        batch_sampler=StepBatches(rows, batch_size, seed, start, steps, acc.process_index, acc.num_processes,
                                  strata),
        generator=torch.Generator(), pin_memory=acc.device.type == "cuda")   # own generator: global RNG untouched
    bar = tqdm(zip(range(start, steps), loader), total=max(0, steps - start), desc=desc,
               disable=not progress or not acc.is_local_main_process)
    skipped = {path for h in history for path, _ in h.get("skipped", [])}
    for step, (batch, problems) in bar:
        logs = {"step": step + 1}
        new = [(str(path), why) for path, why in problems if str(path) not in skipped]
        if new:   # logged with the step (so kept across a resume) and reported once
            skipped.update(path for path, _ in new)
            logs["skipped"] = new
            for path, why in new:
                acc.print(f"{desc}: skipping {path}: {why}")
        if batch is None:
            raise ValueError(f"{desc}: no example of step {step + 1}'s batch could be read (see the files above)")
        batch = tuple(t.to(acc.device) for t in batch)
        batch = batch[0] if len(batch) == 1 else batch
        for obj in objectives:
            obj.optimizer.zero_grad(set_to_none=True)
            loss = obj.loss(mods, batch)
            if isinstance(loss, tuple):
                loss, parts = loss
                logs.update(parts)
            acc.backward(loss)
            if obj.max_grad_norm:
                acc.clip_grad_norm_([p for g in obj.params for p in g["params"]], obj.max_grad_norm)
            obj.optimizer.step()
            if obj.scheduler is not None:
                obj.scheduler.step()
            logs[obj.name] = acc.gather(loss.detach()[None]).mean().item()
        extra = after_step(step + 1, mods) if after_step else None
        logs.update(extra or {})
        history.append(logs)
        if logs.get("stop"):
            break
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if isinstance(v, float)}, refresh=False)
        if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(acc, ckpt, step + 1, history)
    acc.wait_for_everyone()
    if history:
        history[-1]["wall_s"] = round(time.perf_counter() - t0, 3)
    for m in mods.values():
        m.eval()
    if acc.num_processes > 1:
        for m in modules.values():
            global_batchnorm(m, undo=True)
    return history


def save_checkpoint(acc: Accelerator, ckpt: Path, step: int, history: list[dict]) -> None:
    """Write the state to a temp folder, then swap it in: a crash never leaves a half checkpoint."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    if acc.is_main_process:
        atomic_write_json(tmp / "state.json", {"step": step, "history": history})
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def skipped_files(history: list[dict]) -> list[dict]:
    """The files a `fit` could not read (reported and skipped), from its history: [{"path", "problem"}]."""
    return [{"path": path, "problem": why} for h in history for path, why in h.get("skipped", [])]


def balanced(y: torch.Tensor) -> torch.Tensor:
    """Repeat the minority class so that real and fake are drawn equally often."""
    idx = [torch.nonzero(y == c).flatten() for c in (0, 1)]
    n = max(len(i) for i in idx)
    return torch.cat([i.repeat(math.ceil(n / len(i)))[:n] for i in idx])


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch across processes (sums all-reduced with
    autograd), as `torch.nn.SyncBatchNorm`, which runs on accelerators only; this one runs on CPU (gloo) too."""

    def forward(self, x):
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = all_reduce(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce(x.sum(dims)) / n
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n          # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / max(n.item() - 1, 1))   # unbiased, as batch norm
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batchnorm(module: torch.nn.Module, undo: bool = False) -> torch.nn.Module:
    """Make every batch norm layer of `module` normalise over the global batch (`GlobalBatchNorm`), in place: the
    layers keep their parameters and buffers, so optimisers and checkpoints see the same tensors; `undo` reverts."""
    for m in module.modules():
        if undo and isinstance(m, GlobalBatchNorm):
            m.__class__ = m._udet_class
        elif not undo and isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm):
            m._udet_class, m.__class__ = type(m), GlobalBatchNorm
    return module
