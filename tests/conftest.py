import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated assets (the stand-in model) go to a per-session folder, never ~/.cache."""
    old = os.environ.get("PARE_CACHE")
    os.environ["PARE_CACHE"] = str(tmp_path_factory.mktemp("pare_cache"))
    yield
    if old is None:
        os.environ.pop("PARE_CACHE", None)
    else:
        os.environ["PARE_CACHE"] = old


@pytest.fixture(scope="session")
def standin_folder(_isolated_cache):
    from pare.body import standin_dir

    return standin_dir()


@pytest.fixture(scope="session")
def test_output():
    """A folder for artefacts meant to be looked at after the run (runs/ is git-ignored)."""
    from pathlib import Path

    folder = Path(__file__).parents[1] / "runs" / "test-output"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
