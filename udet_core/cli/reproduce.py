"""`python -m udet_core reproduce`: execute the numbered notebooks headless with papermill, in order."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from udet_core.core.io import atomic_write_json
from udet_core.core.paths import REPO_ROOT, default_figures_dir, default_run_dir
from udet_core.core.profiles import get_profile
from udet_core.core.provenance import PeakRSS, code_version
from udet_core.world import zoo

NOTEBOOKS = ("00_data_prep", "01_gduf", "02_diga", "03_craft_training", "04_ablations", "05_honeycomb_collapse")
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


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


def kernel_manager_class(name: str = "python3"):
    """The kernel manager papermill should start kernels with, so that the kernel's sockets are not plain TCP.

    By default jupyter_client starts kernels over TCP without transport encryption, and ipykernel >= 7 then warns
    "Kernel is running over TCP without encryption" on every start. When pyzmq has CurveZMQ and the kernelspec
    declares `supported_encryption: ["curve"]` (ipykernel >= 7 installs it so), the manager provisions CurveZMQ keys
    (`transport_encryption="required"`); otherwise, on POSIX, the kernel talks over IPC (Unix sockets in the temp
    folder) instead; elsewhere it stays the default."""
    import tempfile
    import uuid

    import zmq
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets import default

    try:
        supported = KernelSpecManager().get_kernel_spec(name).metadata.get("supported_encryption") or ()
    except Exception:  # noqa: BLE001 -- no spec: check_kernel reports it; fall through to IPC/TCP
        supported = ()
    supported = {supported.lower()} if isinstance(supported, str) else {str(s).lower() for s in supported}
    if "transport_encryption" in AsyncKernelManager.class_trait_names() and zmq.has("curve") and "curve" in supported:
        class CurveKernelManager(AsyncKernelManager):
            @default("transport_encryption")
            def _encrypted(self):
                return "required"
        return CurveKernelManager
    if os.name == "posix":
        class IPCKernelManager(AsyncKernelManager):
            @default("transport")
            def _ipc(self):
                return "ipc"

            @default("ip")
            def _socket_prefix(self):  # sockets <prefix>-<n>, removed when the kernel is cleaned up
                return str(Path(tempfile.gettempdir()) / f"udet-kernel-{uuid.uuid4().hex[:12]}")
        return IPCKernelManager
    return AsyncKernelManager


def notebook_engine() -> str:
    """Register papermill's nbclient engine, except that a dead kernel becomes an error of the cell it was running
    (so papermill saves the executed copy and raises PapermillExecutionError, as for a failing cell), and that the
    kernel is started by `kernel_manager_class` (transport-encrypted, or over IPC; not plain TCP)."""
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_output
    from papermill.engines import NBClientEngine, papermill_engines

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            kwargs.setdefault("kernel_manager_class", kernel_manager_class(kernel_name))
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


def check_zoo(profile: str, seed: int = 0) -> None:
    """Before any notebook starts: every pretrained model the profile loads is present, uncorrupted and trained with
    its configs (one clear error naming the model and the `pretrain` command otherwise)."""
    p = get_profile(profile, seed=seed)
    if p.zoo:
        zoo.verify(p)


def reproduce(profile: str = "default", run_dir=None, only=None, force: bool = False, seed: int = 0,
              timeout_s: int = 3600, notebook_dir=NOTEBOOK_DIR, data: str = "udet-mini", backbone=None,
              val_fraction: float | None = None) -> dict:
    """Run notebooks 00-05 (those that exist, or `only`) with papermill on a data-set spec and backbone (their
    papermill parameters); stop at the first failure. A notebook that needs udet-mini-only material raises
    `workbench.NotApplicable` on other data: it is recorded as skipped, with the reason, and the run goes on."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    check_zoo(profile, seed)
    data = str(data) if str(data) == "udet-mini" else str(Path(data).resolve())
    run_dir = Path(run_dir or default_run_dir(profile, data)).resolve()
    figures_dir = default_figures_dir(profile, run_dir, data).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = check_kernel()
    wanted = [n for n in NOTEBOOKS if not only or n[:2] in only or n in only]
    os.environ["UDET_TEXT_PROGRESS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    record = {"profile": profile, "data": data, "backbone": backbone, "val_fraction": val_fraction,
              "run_dir": str(run_dir), "figures_dir": str(figures_dir), "seed": seed,
              "code_version": code_version(), "kernel": kernel, "notebooks": {}}
    previous = run_dir / "reproduce.json"
    if only and previous.exists():  # a partial run updates the record of the notebooks it ran
        record["notebooks"] = json.loads(previous.read_text()).get("notebooks", {})
    print(f"udet reproduce: profile={profile} data={data} backbone={backbone or 'stand-ins'} run_dir={run_dir} "
          f"figures={figures_dir}", flush=True)
    t_all = time.perf_counter()
    for i, name in enumerate(wanted, 1):
        src = Path(notebook_dir) / f"{name}.ipynb"
        if not src.exists():
            print(f"[{i}/{len(wanted)}] {name}: not written yet, skipped", flush=True)
            record["notebooks"][name] = {"status": "missing"}
            continue
        print(f"[{i}/{len(wanted)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        params = {"profile": profile, "data": data, "backbone": backbone and str(Path(backbone).resolve()),
                  "val_fraction": val_fraction, "run_dir": str(run_dir), "figures_dir": str(figures_dir),
                  "seed": seed, "force": force, "progress": True}
        status = "ok"
        with PeakRSS(children=True, interval=0.5) as mem:
            try:
                pm.execute_notebook(str(src), str(out_dir / f"{name}.ipynb"), parameters=params, kernel_name="python3",
                                    engine_name=notebook_engine(), cwd=str(REPO_ROOT), log_output=True,
                                    progress_bar=False, request_save_on_cell_execute=False, autosave_cell_every=0,
                                    execution_timeout=timeout_s)
            except PapermillExecutionError as e:
                status = f"skipped: {e.evalue}" if e.ename == "NotApplicable" else failure(e)
        wall = time.perf_counter() - t0
        record["notebooks"][name] = {"status": status, "wall_s": round(wall, 1), "peak_memory_mb": round(mem.peak_mb)}
        record["total_wall_s"] = round(time.perf_counter() - t_all, 1)
        atomic_write_json(run_dir / "reproduce.json", record)
        print(f"[{i}/{len(wanted)}] {name}: {status} in {wall:.0f} s, kernel peak memory {mem.peak_mb:.0f} MiB",
              flush=True)
        if status != "ok" and not status.startswith("skipped"):
            print(f"executed copy with the error: {out_dir / (name + '.ipynb')}", file=sys.stderr)
            raise SystemExit(f"reproduce stopped: notebook {name} {status} (kernel peak memory {mem.peak_mb:.0f} MiB)")
    record["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    atomic_write_json(run_dir / "reproduce.json", record)
    print(f"done in {record['total_wall_s']:.0f} s; record: {run_dir / 'reproduce.json'}", flush=True)
    return record
