"""Notebooks executed headless with papermill on the tiny profile, through the same runner as README command 1."""
import json

import pytest

from udet_core.runner import NOTEBOOK_DIR, check_kernel, reproduce


def test_every_notebook_is_clean_and_parameterised():
    for nb_path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), nb_path
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), nb_path
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_kernel_is_found():
    assert "ipykernel" in check_kernel()


@pytest.mark.notebook
def test_00_data_prep_runs_on_tiny(tiny_run):
    run_dir, _ = tiny_run
    record = reproduce("tiny", run_dir, only=["00"])
    assert record["notebooks"]["00_data_prep"]["status"] == "ok"
    for name in ("00_real_vs_fake_grid.png", "00_family_spectra.png"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    for name in ("00_counts.csv", "00_spectral_baseline.csv", "00_spectral_baseline.json"):
        assert (run_dir / "results" / name).exists()
    executed = json.loads((run_dir / "notebooks" / "00_data_prep.ipynb").read_text())
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
