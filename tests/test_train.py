"""The accelerate training loop: a run interrupted after a checkpoint resumes to the same weights."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from udet_core.engine.train import Objective, fit


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    data = torch.randn(64, 5)
    return model, data


def _interrupt():
    raise KeyboardInterrupt("simulated crash")


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _objective(model, fail_after=None, crash=_interrupt):
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            crash()
        x, y = batch[:, :4], batch[:, 4:]
        return ((m["net"](x) + 0.1 * torch.randn_like(y) - y) ** 2).mean()   # uses the RNG on purpose
    return Objective("mse", loss, [{"params": model.parameters()}], lr=1e-2)


def _train(out_dir=None, **crash):
    """8 steps, checkpointed every 4 into `out_dir` (if given); returns the history and the model."""
    model, data = _setup()   # fresh weights each time: a resumed run takes them from the checkpoint
    hist = fit({"net": model}, [_objective(model, **crash)], data, steps=8, batch_size=16, seed=3, out_dir=out_dir,
               checkpoint_every=4, progress=False)
    return hist, model


def _crash_in_process(out_dir):
    with pytest.raises(KeyboardInterrupt):
        _train(out_dir, fail_after=5)


def _kill_9_in_subprocess(out_dir):
    """A fresh interpreter that SIGKILLs itself in step 6, after the step-4 checkpoint: no cleanup code runs."""
    code = f"import test_train as t; t._train({str(out_dir)!r}, fail_after=5, crash=t._kill)"
    root = str(Path(__file__).resolve().parent.parent)   # this checkout's udet_core, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("crash", [_crash_in_process, _kill_9_in_subprocess], ids=["exception", "kill-9"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, crash):
    hist, model = _train()
    crash(tmp_path)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 4
    hist2, model2 = _train(tmp_path)
    for h in (hist, hist2):
        h[-1].pop("wall_s")
    assert hist2 == hist                                   # steps 1-4 from the checkpoint, 5-8 recomputed
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))   # bitwise


class _WithBadFile(torch.utils.data.Dataset):
    """Examples (x,) of a tensor; example 3 is a file that could not be read."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"problem": ("/data/broken.png", "truncated PNG")} if i == 3 else (self.data[i],)


def test_a_bad_file_is_reported_once_logged_and_skipped(tmp_path, capsys):
    """A data set example that cannot be read (read by 2 DataLoader workers) is reported once, logged in the
    history (so a resumed run still knows it), and left out of the batches that drew it; training goes on."""
    from udet_core.engine.train import StepBatches, skipped_files
    model, data = _setup()
    hist = fit({"net": model}, [_objective(model)], _WithBadFile(data), steps=8, batch_size=16, seed=3,
               progress=False, num_workers=2)
    draws = [[i for i, _ in batch] for batch in StepBatches(torch.arange(64), 16, 3, 0, 8)]
    assert sum(3 in d for d in draws) >= 2                  # drawn more than once, reported once
    assert skipped_files(hist) == [{"path": "/data/broken.png", "problem": "truncated PNG"}]
    assert [h["step"] for h in hist] == list(range(1, 9)) and sum("skipped" in h for h in hist) == 1
    assert capsys.readouterr().out.count("skipping /data/broken.png: truncated PNG") == 1
    assert all(torch.isfinite(torch.tensor(h["mse"])) for h in hist)


def test_model_selection_starts_at_step_0_and_keeps_it_unless_a_check_beats_it():
    """`ModelSelection` checks at step 0, every `every` steps and the last; the kept parameters are those of the best
    check (ties keep the earlier step), restored at the end; `patience` checks without improvement stop training."""
    from udet_core.engine.train import ModelSelection
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    scripted = iter([0.6, 0.6, 0.55, 0.7, 0.65, 0.64, 0.63])   # the values the checks return, in order
    sel = ModelSelection(lambda: {"val_auc": next(scripted)}, {"net": net}, every=2, last=15, patience=3)
    w0 = net.weight.detach().clone()
    assert sel(0)["best_step"] == 0
    logs = {}
    for step in range(1, 16):
        with torch.no_grad():
            net.weight.add_(1.0)                           # each step moves the weights
        logs[step] = sel(step)
        if logs[step] and logs[step]["stop"]:                # as `fit` ends there
            break
    assert [s for s, v in logs.items() if v is not None] == [2, 4, 6, 8, 10, 12]   # 3 checks after the best: stop
    assert logs[2]["best_step"] == 0                        # a tie keeps the earlier step (the start)
    assert logs[6]["best_step"] == 6 and logs[12]["stop"] and not logs[10]["stop"]
    sel.restore()
    assert torch.equal(net.weight, w0 + 6)
    never = ModelSelection(lambda: {"val_auc": 0.4}, {"net": net}, every=1, last=3, patience=5)
    w = net.weight.detach().clone()
    never(0)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert never(1)["best_step"] == 0
    never.restore()
    assert torch.equal(net.weight, w)                       # nothing beat the start: the start is kept
    # only eligible checks are candidates; none eligible: nothing is kept and the model stays as training left it
    picky = ModelSelection(lambda: {"val_auc": 0.9, "ok": False}, {"net": net}, every=1, last=2, patience=5,
                           eligible=lambda row: row["ok"])
    assert picky(0)["best_step"] is None and picky(1)["best_step"] is None and picky.best is None


def test_warmup_raises_the_rate_linearly_and_resumes_with_the_state(tmp_path):
    """An objective with `warmup_steps` steps its optimiser at lr x (s + 1) / warmup for s < warmup, then lr, one
    scheduler step per global step; a run resumed from a checkpoint continues the schedule."""
    seen = []

    def run(out_dir, fail_after=None):
        model, data = _setup()
        obj = _objective(model, fail_after=fail_after)
        obj.warmup_steps = 4
        inner = obj.loss

        def loss(m, batch):
            seen.append(obj.optimizer.param_groups[0]["lr"])
            return inner(m, batch)
        obj.loss = loss
        return fit({"net": model}, [obj], data, steps=6, batch_size=16, seed=3, out_dir=out_dir,
                   checkpoint_every=3, progress=False)
    run(None)
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rel=1e-9)
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, fail_after=4)                         # crashes in step 5, after the step-3 checkpoint
    run(tmp_path)                                           # resumes at step 3 with the scheduler's state
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2] + [1e-2] * 3, rel=1e-9)


def test_stratified_batches_hold_each_stratum_share_exactly_and_split_like_one_process():
    """With `strata`, every batch holds each stratum's proportional share exactly (real / fake / generation rows of
    GDUF: 4 / 4 / 8 of 16, where the unstratified draw varies), only rows of that stratum fill its share, and two
    processes' halves together are the one-process batch."""
    from udet_core.engine.train import StepBatches, stratum_counts
    assert stratum_counts([10, 10, 20], 16).tolist() == [4, 4, 8]
    assert stratum_counts([1, 1, 1], 16).tolist() == [6, 5, 5]          # remainder to the first on ties
    assert stratum_counts([3, 97], 16).tolist() == [0, 16]               # 0.48 rounds away: proportional, not floor 1
    strata = np.repeat([0, 1, 2], [10, 10, 20])
    rows = np.arange(100, 140)                                           # positions map to these example indices
    one = [[i for i, _ in b] for b in StepBatches(rows, 16, 5, 0, 30, strata=strata)]
    assert all(np.bincount(strata[np.asarray(b) - 100], minlength=3).tolist() == [4, 4, 8] for b in one)
    plain = [np.bincount(strata[np.asarray([i for i, _ in b]) - 100], minlength=3).tolist()
             for b in StepBatches(rows, 16, 5, 0, 30)]
    assert any(c != [4, 4, 8] for c in plain)                             # balance was only in expectation before
    halves = [list(StepBatches(rows, 16, 5, 0, 30, rank=r, world=2, strata=strata)) for r in (0, 1)]
    for s, b in enumerate(one):
        merged = sorted([(k[2], i) for i, k in halves[0][s] + halves[1][s]])
        assert [i for _, i in merged] == b
