"""One training loop for every model in the workbench, written with HF `accelerate`.

The same code runs on CPU, one GPU, or `accelerate launch` over many processes. Each step draws its batch
indices from a generator seeded by (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would, and N processes split the very batch that one process would see. State (model weights as
safetensors, optimizers, RNG) is saved with `Accelerator.save_state` every `checkpoint_every` steps and training
resumes from the last checkpoint.
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

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from .progress import tqdm

from .runs import atomic_write_json


@dataclass
class Objective:
    """One optimiser and the loss it minimises: `loss(modules, batch) -> scalar tensor`, or `(scalar, parts)`
    where `parts` (name -> float) are logged beside it (e.g. the terms of a weighted sum).

    `params` are torch parameter groups (each may carry its own `lr`): differential learning rates.
    Several objectives (e.g. a GAN's D and G) are stepped in order on the same batch.
    """
    name: str
    loss: Callable[[dict, torch.Tensor], torch.Tensor]
    params: list
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)


def _batch_indices(n: int, batch_size: int, seed: int, step: int, rank: int, world: int) -> torch.Tensor:
    """The global batch of `step` (the same on every process); process `rank` takes every world-th item."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)[rank::world]


def fit(modules: dict, objectives: list[Objective], data: torch.Tensor, *, steps: int, batch_size: int,
        seed: int, out_dir=None, checkpoint_every: int = 0, desc: str = "train", progress: bool = True,
        accelerator: Accelerator | None = None, after_step: Callable[[int, dict], dict | None] | None = None
        ) -> list[dict]:
    """Train `modules` for `steps` steps; returns the per-step history [{'step', '<objective>': loss, ...}].

    `batch_size` is the global batch: with N processes each takes batch_size/N of the same draw, so gradients
    (averaged by DDP) equal those of one process on the whole batch.

    `data` is an in-memory tensor (or tuple of tensors indexed together) of training examples. With `out_dir`
    and `checkpoint_every > 0`, state is checkpointed to `out_dir/checkpoint` and a rerun resumes from it.

    `after_step(step, modules)` (e.g. a validation check) may return a dict that is logged with the step; a true
    `"stop"` in it ends training there (early stopping).
    """
    acc = accelerator or Accelerator()
    set_seed(seed + acc.process_index)
    names = list(modules)
    prepared = acc.prepare(*[modules[k] for k in names])
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    mods = dict(zip(names, prepared))
    for obj in objectives:
        obj.optimizer = acc.prepare(torch.optim.AdamW(obj.params, lr=obj.lr, weight_decay=obj.weight_decay))
    tensors = data if isinstance(data, tuple) else (data,)
    n = len(tensors[0])

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
    bar = tqdm(range(start, steps), desc=desc, disable=not progress or not acc.is_local_main_process)
    for step in bar:
        idx = _batch_indices(n, batch_size, seed, step, acc.process_index, acc.num_processes)
        batch = tuple(t[idx].to(acc.device) for t in tensors)
        batch = batch[0] if len(batch) == 1 else batch
        logs = {"step": step + 1}
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
            logs[obj.name] = acc.gather(loss.detach()[None]).mean().item()
        extra = after_step(step + 1, mods) if after_step else None
        logs.update(extra or {})
        history.append(logs)
        if logs.get("stop"):
            break
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "step"}, refresh=False)
        if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(acc, ckpt, step + 1, history)
    acc.wait_for_everyone()
    if history:
        history[-1]["wall_s"] = round(time.perf_counter() - t0, 3)
    for m in mods.values():
        m.eval()
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


def balanced(y: torch.Tensor) -> torch.Tensor:
    """Repeat the minority class so that real and fake are drawn equally often."""
    idx = [torch.nonzero(y == c).flatten() for c in (0, 1)]
    n = max(len(i) for i in idx)
    return torch.cat([i.repeat(math.ceil(n / len(i)))[:n] for i in idx])
