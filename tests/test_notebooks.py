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


@pytest.mark.notebook
def test_runner_stops_at_the_first_failure_and_names_notebook_and_cell(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("profile = 'tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("x = 1"), new_code_cell("raise ValueError('broken on purpose')")]
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nbformat.write(nb, nbdir / "00_data_prep.ipynb")
    nbformat.write(nb, nbdir / "01_gduf.ipynb")
    with pytest.raises(SystemExit, match=r"00_data_prep failed in cell \d+ .*ValueError: broken on purpose"):
        reproduce("tiny", tmp_path / "run", notebook_dir=nbdir)
    record = json.loads((tmp_path / "run" / "reproduce.json").read_text())
    assert "01_gduf" not in record["notebooks"]          # stopped at the first failure
    assert (tmp_path / "run" / "notebooks" / "00_data_prep.ipynb").exists()  # executed copy kept for debugging
