"""`python -m udet_core reproduce`: execute the numbered notebooks headless with papermill, in order."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .runs import REPO_ROOT, PeakRSS, atomic_write_json, code_version

NOTEBOOKS = ("00_data_prep", "01_gduf", "02_diga", "03_craft_training", "04_ablations", "05_honeycomb_collapse")
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def default_run_dir(profile: str) -> Path:
    return REPO_ROOT / "runs" / profile


def default_figures_dir(profile: str, run_dir) -> Path:
    """The repository's `figures/` for real profiles; inside the run dir for `tiny` (tests never touch figures/)."""
    return Path(run_dir) / "figures" if profile == "tiny" else REPO_ROOT / "figures"


def check_kernel(name: str = "python3") -> str:
    """Make sure the Jupyter kernel `name` exists and runs this interpreter; return its command."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel named {name!r}: install ipykernel in this environment "
                           f"({sys.executable} -m pip install ipykernel)") from None
    exe = spec.argv[0]
    if exe not in ("python", "python3", "{python}") and Path(exe).resolve() != Path(sys.executable).resolve():
        raise RuntimeError(f"the {name!r} kernel in {spec.resource_dir} runs {exe}, not this interpreter "
                           f"({sys.executable}); remove that kernelspec or run "
                           f"`{sys.executable} -m ipykernel install --sys-prefix`")
    return " ".join(spec.argv)


DEAD_KERNEL = ("likely out of memory or killed; a rerun of the same command resumes from the finished artifacts "
               "and training checkpoints")


def notebook_engine() -> str:
    """Register papermill's nbclient engine, except that a dead kernel becomes an error of the cell it was running
    (so papermill saves the executed copy and raises PapermillExecutionError, as for a failing cell)."""
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_output
    from papermill.engines import NBClientEngine, papermill_engines

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            except DeadKernelError:
                started = [c for c in nb_man.nb.cells if c.cell_type == "code" and c.metadata.papermill["start_time"]]
                if not started:
                    raise
                cell = started[-1]
                cell.outputs.append(new_output("error", ename="DeadKernelError", evalue=DEAD_KERNEL, traceback=[]))
                nb_man.cell_exception(cell)

    papermill_engines.register("udet", Engine)
    return "udet"


def failure(e) -> str:
    """A failed cell in one line: index, execution count, first source line, error."""
    first = (e.source.strip().splitlines() or [""])[0][:80]
    where = "kernel died in" if e.ename == "DeadKernelError" else "failed in"
    count = "" if e.exec_count is None else f"execution count {e.exec_count}: "  # None when the kernel died first
    return f"{where} cell {e.cell_index} ({count}{first}): {e.ename}: {e.evalue}"


def reproduce(profile: str = "default", run_dir=None, only=None, force: bool = False, seed: int = 0,
              timeout_s: int = 3600, notebook_dir=NOTEBOOK_DIR) -> dict:
    """Run notebooks 00-05 (those that exist, or `only`) with papermill; stop at the first failure."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    run_dir = Path(run_dir or default_run_dir(profile)).resolve()
    figures_dir = default_figures_dir(profile, run_dir).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = check_kernel()
    wanted = [n for n in NOTEBOOKS if not only or n[:2] in only or n in only]
    os.environ["UDET_TEXT_PROGRESS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    record = {"profile": profile, "run_dir": str(run_dir), "figures_dir": str(figures_dir), "seed": seed,
              "code_version": code_version(), "kernel": kernel, "notebooks": {}}
    previous = run_dir / "reproduce.json"
    if only and previous.exists():  # a partial run updates the record of the notebooks it ran
        record["notebooks"] = json.loads(previous.read_text()).get("notebooks", {})
    print(f"udet reproduce: profile={profile} run_dir={run_dir} figures={figures_dir}", flush=True)
    t_all = time.perf_counter()
    for i, name in enumerate(wanted, 1):
        src = Path(notebook_dir) / f"{name}.ipynb"
        if not src.exists():
            print(f"[{i}/{len(wanted)}] {name}: not written yet, skipped", flush=True)
            record["notebooks"][name] = {"status": "missing"}
            continue
        print(f"[{i}/{len(wanted)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        params = {"profile": profile, "run_dir": str(run_dir), "figures_dir": str(figures_dir), "seed": seed,
                  "force": force, "progress": True}
        status = "ok"
        with PeakRSS(children=True, interval=0.5) as mem:
            try:
                pm.execute_notebook(str(src), str(out_dir / f"{name}.ipynb"), parameters=params, kernel_name="python3",
                                    engine_name=notebook_engine(), cwd=str(REPO_ROOT), log_output=True,
                                    progress_bar=False, request_save_on_cell_execute=False, autosave_cell_every=0,
                                    execution_timeout=timeout_s)
            except PapermillExecutionError as e:
                status = failure(e)
        wall = time.perf_counter() - t0
        record["notebooks"][name] = {"status": status, "wall_s": round(wall, 1), "peak_memory_mb": round(mem.peak_mb)}
        record["total_wall_s"] = round(time.perf_counter() - t_all, 1)
        atomic_write_json(run_dir / "reproduce.json", record)
        print(f"[{i}/{len(wanted)}] {name}: {status} in {wall:.0f} s, kernel peak memory {mem.peak_mb:.0f} MiB",
              flush=True)
        if status != "ok":
            print(f"executed copy with the error: {out_dir / (name + '.ipynb')}", file=sys.stderr)
            raise SystemExit(f"reproduce stopped: notebook {name} {status} (kernel peak memory {mem.peak_mb:.0f} MiB)")
    record["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    atomic_write_json(run_dir / "reproduce.json", record)
    print(f"done in {record['total_wall_s']:.0f} s; record: {run_dir / 'reproduce.json'}", flush=True)
    return record
