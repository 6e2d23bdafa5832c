"""Notebooks executed headless with papermill on the tiny profile, through the same runner as README command 1."""
import json
from pathlib import Path

import pytest

from udet_core.cli.reproduce import NOTEBOOK_DIR, check_kernel, reproduce


def test_every_notebook_is_clean_and_parameterised():
    for nb_path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), nb_path
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), nb_path
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_kernel_is_found():
    assert "ipykernel" in check_kernel()


FIGURES = {"00_data_prep": ("00_real_vs_fake_grid", "00_family_spectra"),
           "01_gduf": ("01_gduf_training_curves", "01_gduf_learning_curve", "01_gduf_ablation", "01_gduf_explanations",
                       "01_gduf_samples"),
           "02_diga": ("02_diga_training_curves", "02_diga_samples"),
           "03_craft_training": ("03_craft_training_curve", "03_craft_distance_by_family", "03_comparison_ap"),
           "04_ablations": ("04_robustness_craft_bacc", "04_robustness_dire_AP", "04_robustness_aeroblade_bacc",
                            "04_robustness_cnnspot_bacc", "04_format_bias", "04_craft_ablations"),
           "05_honeycomb_collapse": ("05_honeycomb_figure1", "05_reconstruction_spectra", "05_jacobian_norms",
                                     "05_upsampler_ablation")}
RESULTS = {"00_data_prep": ("00_counts", "00_backbone_fidelity", "00_spectral_baseline"),
           "01_gduf": ("01_paper_model_parameters", "01_gduf_training_cost", "01_gduf_ablation", "01_gduf_paper_ordering",
                       "01_gduf_linear_probes"),
           "02_diga": ("02_diga_table4", "02_diga_ordering", "02_diga_detection"),
           "03_craft_training": ("03_craft_summary", "03_craft_per_family", "03_comparison", "03_comparison_per_family",
                                 "03_cross_domain", "03_unigendet_verdicts"),
           "04_ablations": ("04_robustness", "04_format_bias", "04_craft_table2", "04_craft_table5", "04_craft_table6",
                            "04_craft_lambda", "04_craft_margin", "04_craft_delta", "04_craft_paper_claims", "04_effects",
                            "04_craft_premise"),
           "05_honeycomb_collapse": ("05_reconstruction_peaks", "05_jacobian_norms", "05_upsampler_ablation",
                                     "05_upsampler_findings")}


@pytest.mark.notebook
def test_every_notebook_runs_on_tiny(tiny_run):
    """README command 1's runner on the tiny profile: every notebook that exists runs and writes its outputs."""
    run_dir, _ = tiny_run
    record = reproduce("tiny", run_dir)
    ran = {n: r for n, r in record["notebooks"].items() if r["status"] != "missing"}
    assert set(FIGURES) <= set(ran) and all(r["status"] == "ok" for r in ran.values()), record
    for nb in ran:
        for name in FIGURES.get(nb, ()):
            assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000, name
        for name in RESULTS.get(nb, ()):
            table = (run_dir / "results" / f"{name}.csv").read_text().splitlines()
            assert len(table) >= 2, name                                   # header + at least one row
            prov = json.loads((run_dir / "results" / f"{name}.json").read_text())
            assert prov["code_version"] and "seed" in prov and "timings_s" in prov
        executed = json.loads((run_dir / "notebooks" / f"{nb}.ipynb").read_text())
        assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")


def _notebooks(tmp_path, *cells) -> Path:
    """A folder with notebooks 00 and 01, each a parameters cell followed by `cells`."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("profile = 'tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *map(new_code_cell, cells)]
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nbformat.write(nb, nbdir / "00_data_prep.ipynb")
    nbformat.write(nb, nbdir / "01_gduf.ipynb")
    return nbdir


@pytest.mark.notebook
def test_runner_stops_at_the_first_failure_and_names_notebook_and_cell(tmp_path):
    nbdir = _notebooks(tmp_path, "x = 1", "raise ValueError('broken on purpose')")
    with pytest.raises(SystemExit, match=r"00_data_prep failed in cell \d+ .*ValueError: broken on purpose"):
        reproduce("tiny", tmp_path / "run", notebook_dir=nbdir)
    record = json.loads((tmp_path / "run" / "reproduce.json").read_text())
    assert "01_gduf" not in record["notebooks"]          # stopped at the first failure
    assert (tmp_path / "run" / "notebooks" / "00_data_prep.ipynb").exists()  # executed copy kept for debugging


@pytest.mark.notebook
def test_runner_reports_a_dead_kernel_like_a_failing_cell(tmp_path):
    """kill -9 / out of memory: the runner names notebook and cell, keeps the outputs so far, exits non-zero."""
    nbdir = _notebooks(tmp_path, "print('before the kill')", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(SystemExit, match=r"00_data_prep kernel died in cell 3 .*import os, signal.*DeadKernelError.*"
                                         r"rerun.*resumes.*kernel peak memory \d+ MiB"):
        reproduce("tiny", tmp_path / "run", notebook_dir=nbdir)
    record = json.loads((tmp_path / "run" / "reproduce.json").read_text())
    assert record["notebooks"]["00_data_prep"]["status"].startswith("kernel died in cell 3 ")
    assert record["notebooks"]["00_data_prep"]["peak_memory_mb"] > 0
    assert "01_gduf" not in record["notebooks"]
    executed = (tmp_path / "run" / "notebooks" / "00_data_prep.ipynb").read_text()
    assert "before the kill" in executed and "DeadKernelError" in executed


@pytest.mark.notebook
def test_every_notebook_runs_on_a_folder_data_set(tiny_run, tmp_path):
    """`reproduce --data <0_real/1_fake tree> --backbone <pipeline> --val-fraction F` on tiny: the notebooks that apply
    run on that data set with that backbone; 01 (explanations) and 02 (udet-mini's captions) are recorded as skipped,
    with the reason; 05 skips only its upsampler ablation; nothing is written to the udet-mini run."""
    from udet_core.data.synthetic import synthetic_tree
    _, bench = tiny_run
    tree = tmp_path / "tree"
    synthetic_tree(tree, n_train=48, n_test=24, size=24, progress=False)
    run_dir = tmp_path / "run"
    record = reproduce("tiny", run_dir, data=str(tree), backbone=str(bench.generators.backbone_path), val_fraction=0.25)
    status = {n: r["status"] for n, r in record["notebooks"].items()}
    assert status["01_gduf"].startswith("skipped: UniGenDet learns to detect with a textual explanation"), status
    assert status["02_diga"].startswith("skipped: DIGA's generation metrics"), status
    assert all(status[n] == "ok" for n in ("00_data_prep", "03_craft_training", "04_ablations", "05_honeycomb_collapse"))
    comp = json.loads((run_dir / "results" / "03_comparison.json").read_text())
    assert comp["data_provenance"]["layout"] == "0_real/1_fake" and comp["backbone"] == str(bench.generators.backbone_path)
    assert comp["data_provenance"]["val_fraction"] == 0.25 and "tree" in comp["data"]
    for name in ("00_counts", "00_backbone_fidelity", "03_comparison", "03_craft_per_family", "04_craft_table2",
                 "04_robustness", "04_format_bias", "04_craft_premise", "05_jacobian_norms"):
        assert len((run_dir / "results" / f"{name}.csv").read_text().splitlines()) >= 2, name
    assert not (run_dir / "results" / "05_upsampler_ablation.csv").exists()
    assert (run_dir / "figures" / "03_comparison_ap.png").stat().st_size > 1000
    assert not list((run_dir / "artifacts").glob("udet-mini-*"))        # udet-mini was never built for this run
