import os
from pathlib import Path

import pytest
import torch

# The tensors in the tests are tiny: one thread is faster than two, and keeps the
# suite steady when the machine is busy with other work.
torch.set_num_threads(1)

# The real data the data tests read: ../shared/data next to the repository. The variable
# points elsewhere (e.g. at a folder that does not exist, to see what runs without it).
SHARED_DATA = Path(os.environ.get("FEWSHOT_TEST_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")

# With FEWSHOT_REQUIRE_SHARED_DATA=1 (set by .ci/run), a test that skips because something under
# SHARED_DATA is missing fails the session whenever SHARED_DATA itself is present: on a machine that
# has the data, every data test must run. Such skips name a path under SHARED_DATA in their reason.
DATA_SKIPS = []


def pytest_runtest_logreport(report):
    if report.skipped and str(SHARED_DATA) in str(report.longrepr):
        DATA_SKIPS.append(report.nodeid)


def shared_data_required():
    return os.environ.get("FEWSHOT_REQUIRE_SHARED_DATA") == "1" and SHARED_DATA.is_dir()


def pytest_sessionfinish(session, exitstatus):
    if DATA_SKIPS and shared_data_required() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if DATA_SKIPS:
        verdict = ("FAILED: the shared data folder is present, so none may skip"
                   if shared_data_required() else "they need the shared data")
        terminalreporter.write_line(f"{len(DATA_SKIPS)} tests skipped for missing files under {SHARED_DATA}; "
                                    f"{verdict}", red=shared_data_required(), yellow=not shared_data_required())
        if shared_data_required():
            for nodeid in DATA_SKIPS:
                terminalreporter.write_line(f"  {nodeid}")


def skip_without(path, what):
    """Skip the calling test (or fixture) when `path`, under SHARED_DATA, is missing."""
    if not Path(path).exists():
        pytest.skip(f"{what} not found at {path} (shared data folder: {SHARED_DATA})")


@pytest.fixture(autouse=True)
def fewshot_home(tmp_path, monkeypatch):
    """Every test prepares datasets under its own folder, never the user's cache."""
    home = tmp_path / "fewshot-home"
    monkeypatch.setenv("FEWSHOT_HOME", str(home))
    # the CPU wherever --device is left out, also on a GPU machine (tests of the choice unset it)
    monkeypatch.setenv("FEWSHOT_DEVICE", "cpu")
    return home


@pytest.fixture(scope="session")
def omniglot28():
    path = SHARED_DATA / "omniglot-28"
    skip_without(path / "index.csv", "the real 28x28 Omniglot sprites")
    return path


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory, omniglot28):
    """The real 28x28 Omniglot imported once per test session."""
    from fewshot.data.omniglot import import_omniglot
    folder = tmp_path_factory.mktemp("omniglot-cache")
    import_omniglot(omniglot28, folder, size=28, progress=False)
    return folder
