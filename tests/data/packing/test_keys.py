"""Sample keys: writers and parsers round-trip, and packed shards' keys match their provenance."""

import json
import tarfile
from pathlib import Path

import pytest

from pare.data.packing.keys import key_3dpw, key_mpii, parse_3dpw_key, parse_mpii_key


@pytest.mark.parametrize(
    ("sequence", "actor", "frame", "key"),
    [
        ("courtyard_basketball_00", 0, 0, "3dpw_courtyard_basketball_00_a0_f00000"),
        ("downtown_walk_00", 1, 12, "3dpw_downtown_walk_00_a1_f00012"),
        ("outdoors_fencing_01", 2, 99999, "3dpw_outdoors_fencing_01_a2_f99999"),
        ("long_sequence", 0, 123456, "3dpw_long_sequence_a0_f123456"),  # wider than the padding
        ("odd_a1_f00002", 3, 4, "3dpw_odd_a1_f00002_a3_f00004"),  # key-like sequence name
        ("x", 10, 7, "3dpw_x_a10_f00007"),
    ],
)
def test_3dpw_keys_round_trip(sequence, actor, frame, key):
    assert key_3dpw(sequence, actor, frame) == key
    assert parse_3dpw_key(key) == (sequence, actor, frame)


@pytest.mark.parametrize(
    ("image", "rect", "key", "stem"),
    [
        ("015601864.jpg", 0, "mpii_015601864_r0", "015601864"),
        ("some_image_r2.jpg", 11, "mpii_some_image_r2_r11", "some_image_r2"),
        ("nested/000001.png", 3, "mpii_000001_r3", "000001"),
    ],
)
def test_mpii_keys_round_trip(image, rect, key, stem):
    assert key_mpii(image, rect) == key
    assert parse_mpii_key(key) == (stem, rect)


@pytest.mark.parametrize(
    "key", ["mpii_000001_r0", "3dpw_seq_a0", "3dpw_seq_a0_f", "3dpw__a0_f1", "3dpw_seq_ax_f1"]
)
def test_3dpw_parser_rejects_other_keys(key):
    with pytest.raises(ValueError, match="not a packed 3DPW key"):
        parse_3dpw_key(key)


@pytest.mark.parametrize("key", ["3dpw_seq_a0_f00001", "mpii_000001", "mpii__r1", "mpii_x_r"])
def test_mpii_parser_rejects_other_keys(key):
    with pytest.raises(ValueError, match="not a packed MPII key"):
        parse_mpii_key(key)


def _keys_and_provenance(folder: Path) -> dict[str, dict]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "json":
                    out[key] = json.loads(tar.extractfile(member).read())
    return out


def test_packed_keys_parse_back_to_their_provenance(packed):
    for split in ("3dpw", "3dpw_val"):
        samples = _keys_and_provenance(packed / split)
        assert samples
        for key, prov in samples.items():
            assert prov["dataset"] == "3dpw"
            assert parse_3dpw_key(key) == (prov["sequence"], prov["person"], prov["frame"])
            assert key == key_3dpw(prov["sequence"], prov["person"], prov["frame"])
    for split in ("mpii", "mpii_val"):
        samples = _keys_and_provenance(packed / split)
        assert samples
        for key, prov in samples.items():
            assert prov["dataset"] == "mpii"
            assert parse_mpii_key(key) == (Path(prov["image"]).stem, prov["person"])
            assert key == key_mpii(prov["image"], prov["person"])
