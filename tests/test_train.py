"""The accelerate training loop: a run interrupted after a checkpoint resumes to the same weights."""
import pytest
import torch
from torch import nn

from udet_core.train import Objective, fit


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    data = torch.randn(64, 5)
    return model, data


def _objective(model, fail_after=None):
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise KeyboardInterrupt("simulated crash")
        x, y = batch[:, :4], batch[:, 4:]
        return ((m["net"](x) + 0.1 * torch.randn_like(y) - y) ** 2).mean()   # uses the RNG on purpose
    return Objective("mse", loss, [{"params": model.parameters()}], lr=1e-2)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    model, data = _setup()
    hist = fit({"net": model}, [_objective(model)], data, steps=8, batch_size=16, seed=3, progress=False)
    reference = [p.detach().clone() for p in model.parameters()]

    model, data = _setup()
    with pytest.raises(KeyboardInterrupt):
        fit({"net": model}, [_objective(model, fail_after=5)], data, steps=8, batch_size=16, seed=3,
            out_dir=tmp_path, checkpoint_every=4, progress=False)
    assert (tmp_path / "checkpoint" / "state.json").exists()

    model, data = _setup()  # fresh process state: weights come from the checkpoint
    hist2 = fit({"net": model}, [_objective(model)], data, steps=8, batch_size=16, seed=3, out_dir=tmp_path,
                checkpoint_every=4, progress=False)
    assert [h["mse"] for h in hist2] == pytest.approx([h["mse"] for h in hist], rel=1e-6)
    for a, b in zip(reference, model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
