import pytest

from udet_core.core.profiles import get_profile


@pytest.fixture(scope="session")
def tiny():
    return get_profile("tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny):
    """One tiny udet-mini build shared by the whole session (the notebook test reuses its cache)."""
    from udet_core.world.benchmark import build_benchmark
    run_dir = tmp_path_factory.mktemp("tiny_run")
    return run_dir, build_benchmark(tiny, run_dir, progress=False)


@pytest.fixture(scope="session")
def tiny_wb(tiny_run):
    """The workbench of that build: the tiny profile on udet-mini, held in memory."""
    from udet_core.study.workbench import open_workbench
    run_dir, _ = tiny_run
    return open_workbench("tiny", run_dir=run_dir)
