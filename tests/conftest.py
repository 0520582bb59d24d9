import os
from pathlib import Path

import pytest

from pare.data.packing.pack import pack_3dpw, pack_mpii
from pare.data.packing.shard_writer import ShardOptions
from pare.data.synthetic.mpii import SyntheticMPIIConfig, make_mpii
from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw

OPTS = ShardOptions(maxcount=6, progress=False)


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

    folder = Path(__file__).parents[1] / "runs" / "test-output"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Synthetic raw data and its packed shards, shared by the data, model and training tests (built
# once per session).


@pytest.fixture(scope="session")
def raw(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw")
    # Four sequences: splits are assigned round-robin, so train gets two.
    make_3dpw(
        base / "3dpw",
        Synthetic3DPWConfig(sequences=4, frames=6, seed=2, width=270, height=480),
        progress=False,
    )
    make_mpii(
        base / "mpii",
        SyntheticMPIIConfig(images=24, seed=2, image_scale=0.4, eft=True),
        progress=False,
    )
    return base


@pytest.fixture(scope="session")
def packed(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    pack_3dpw(raw / "3dpw", "train", out / "3dpw", "standin", OPTS)
    pack_3dpw(raw / "3dpw", "validation", out / "3dpw_val", "standin", OPTS)
    for split, name in (("train", "mpii"), ("val", "mpii_val")):
        pack_mpii(
            raw / "mpii", split, out / name, "standin", OPTS, eft=raw / "mpii" / "MPII_ver01.json"
        )
    return out


def accelerate_launch(processes: int, port: int, *flags: str) -> list[str]:
    """The ``accelerate launch`` prefix the tests use (see pare.launch)."""
    from pare.launch import accelerate_launch_command

    return accelerate_launch_command(processes, port, *flags)
