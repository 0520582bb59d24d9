"""Synthetic raw data and its packed shards, shared by the data tests (built once per session)."""

import pytest

from pare.data.pack import pack_3dpw, pack_mpii
from pare.data.shard_writer import ShardOptions
from pare.data.synthetic_3dpw import Synthetic3DPWConfig, make_3dpw
from pare.data.synthetic_mpii import SyntheticMPIIConfig, make_mpii

OPTS = ShardOptions(maxcount=6, progress=False)


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
    pack_mpii(
        raw / "mpii", "train", out / "mpii", "standin", OPTS, eft=raw / "mpii" / "MPII_ver01.json"
    )
    return out
