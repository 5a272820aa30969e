from pathlib import Path

import pytest
import torch

# The tensors in the tests are tiny: one thread is faster than two, and keeps the
# suite steady when the machine is busy with other work.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fewshot_home(tmp_path, monkeypatch):
    """Every test prepares datasets under its own folder, never the user's cache."""
    home = tmp_path / "fewshot-home"
    monkeypatch.setenv("FEWSHOT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def omniglot28():
    path = SHARED_DATA / "omniglot-28"
    if not (path / "index.csv").is_file():
        pytest.skip(f"real Omniglot sprites not found at {path}")
    return path


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory, omniglot28):
    """The real 28x28 Omniglot imported once per test session."""
    from fewshot.data.omniglot import import_omniglot
    folder = tmp_path_factory.mktemp("omniglot-cache")
    import_omniglot(omniglot28, folder, size=28, progress=False)
    return folder
