"""Sample keys of packed shards: each dataset's key writer next to its parser.

    3DPW  3dpw_<sequence>_a<actor>_f<frame>   frame zero-padded to 5 digits (more when larger)
    MPII  mpii_<image stem>_r<rect>           rect: the person's index in the image's annotation

A key names its sample in every shard (WebDataset's ``__key__``), so evaluation groups results
per sequence and the export places each prediction at its (actor, frame) from the key alone.
Sequence names and image stems may hold underscores: the parsers anchor on the trailing fields.
"""

from __future__ import annotations

import re
from pathlib import Path

_KEY_3DPW = re.compile(r"^3dpw_(?P<sequence>.+)_a(?P<actor>\d+)_f(?P<frame>\d+)$")
_KEY_MPII = re.compile(r"^mpii_(?P<image>.+)_r(?P<rect>\d+)$")


def key_3dpw(sequence: str, actor: int, frame: int) -> str:
    """The key of 3DPW ``sequence``'s ``actor`` (0-based) in ``frame`` (0-based image index)."""
    return f"3dpw_{sequence}_a{actor}_f{frame:05d}"


def parse_3dpw_key(key: str) -> tuple[str, int, int]:
    """(sequence, actor, frame) of a packed 3DPW sample's key; ValueError for any other key."""
    match = _KEY_3DPW.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a packed 3DPW key (3dpw_<sequence>_a<actor>_f<frame>)")
    return match["sequence"], int(match["actor"]), int(match["frame"])


def key_mpii(image: str, rect: int) -> str:
    """The key of person ``rect`` in MPII image ``image`` (a file name such as ``015601864.jpg``;
    the key keeps its stem, since WebDataset splits a tar member's name at its first dot)."""
    return f"mpii_{Path(image).stem}_r{rect}"


def parse_mpii_key(key: str) -> tuple[str, int]:
    """(image stem, rect) of a packed MPII sample's key; ValueError for any other key."""
    match = _KEY_MPII.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a packed MPII key (mpii_<image stem>_r<rect>)")
    return match["image"], int(match["rect"])
