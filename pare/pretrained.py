"""Pretrained backbone files: where PARE's come from, and the check that a configured one exists
and looks like a checkpoint.

Free of torch and timm, so train/train.py can report a missing, truncated or foreign file before
its imports, which take seconds (15 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

RANDOM = "random"  # model.backbone_weights for a deliberate random start
TIMM = "timm"  # timm's pretrained weights (downloaded on first use)

# The file PARE starts each backbone from, and where to get it.
SOURCES = {
    "hrnet_w32": (
        "pose_hrnet_w32_256x192.pth",
        "the HRNet project's COCO pose models (deep-high-resolution-net.pytorch, pose_coco)",
    ),
    "resnet50": (
        "resnet50-0676ba61.pth",
        "torchvision's model zoo (ResNet50_Weights.IMAGENET1K_V1)",
    ),
}


def needs_file(weights: str) -> bool:
    """Whether ``model.backbone_weights`` names a local file (not ``"random"``, ``"timm"``, or
    ``""``, the random start as earlier run folders spell it)."""
    return weights not in (RANDOM, TIMM, "")


class BackboneWeightsError(ValueError):
    """A configured backbone weight file that cannot be used: truncated, damaged, not a
    checkpoint, or a checkpoint of another network. The message is one line naming the file."""


def where_to_get(name: str) -> str:
    """Where the weight file a backbone starts from comes from (for error messages)."""
    if name in SOURCES:
        file, source = SOURCES[name]
        return f"PARE starts {name} from {file}, from {source}"
    return f"point it at a .pth/.safetensors checkpoint of {name or 'the backbone'}"


def damaged_weights(path: str | Path, name: str, why: str) -> BackboneWeightsError:
    """The one-line error for a weight file that exists but cannot be used."""
    again = (
        f"download it again ({where_to_get(name)})"
        if name in SOURCES
        else "copy it again or re-save it as a plain state dict (.pth or .safetensors)"
    )
    return BackboneWeightsError(
        f"backbone weights {path} (model.backbone_weights) {why}; {again}, or set "
        f"model.backbone_weights={RANDOM} for a deliberate random start"
    )


def check_backbone_weights(name: str, weights: str) -> None:
    """Raise FileNotFoundError, one line naming the file, where to get it and the random-start
    override, when ``weights`` names a local file that does not exist for backbone ``name``;
    :class:`BackboneWeightsError` when the file is plainly not a whole checkpoint (see
    :func:`check_checkpoint_format`)."""
    if not needs_file(weights):
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights not found: {weights} (model.backbone_weights); "
            f"{where_to_get(name)}; or set model.backbone_weights={RANDOM} for a deliberate "
            "random start"
        )
    why = check_checkpoint_format(path)
    if why:
        raise damaged_weights(weights, name, why)


# torch.save's formats: a zip archive (torch >= 1.6), or the legacy pickle stream that opens
# with protocol 2 and torch's magic number 0x1950a86a20f9469cfc6c (the 2019 HRNet files).
_ZIP = b"PK\x03\x04"
_LEGACY = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def check_checkpoint_format(path: Path) -> str:
    """Why ``path`` is not a whole checkpoint, from its first and last bytes ("" when it looks
    whole): a cut zip loses its central directory, a cut safetensors file its last tensors.
    A legacy torch pickle can only be checked by loading it (:func:`pare.models.backbones.
    read_checkpoint` names it then)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size, head)
    if head.startswith(_ZIP):
        try:
            with zipfile.ZipFile(path):
                return ""
        except (zipfile.BadZipFile, OSError) as err:
            return f"is truncated or damaged (a {size}-byte torch zip archive: {err})"
    if head.startswith(_LEGACY) or tarfile.is_tarfile(path):  # tar: torch's oldest format
        return ""
    return (
        f"is not a readable weights-only torch checkpoint nor a safetensors file ({size} bytes, "
        f"starting {head[:8]!r})"
    )


def _safetensors_problem(path: Path, size: int, head: bytes) -> str:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes;
    the header's largest end offset must be the end of the file."""
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if header_len < 2 or 8 + header_len > size:
        return f"is not a whole safetensors file ({size} bytes; header length {header_len})"
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "is not a safetensors file (its header is not JSON)"
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return "is not a safetensors file (its header does not list tensors)"
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return ""
