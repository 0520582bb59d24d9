"""Reading an offline W&B run without the network: the ``run-<id>.wandb`` record log.

The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of records, each with a 7-byte header (CRC-32, length, type: full, first, middle,
last) and a serialised ``wandb_internal_pb2.Record``. Used by the tests and the demo to show what
a run logged; ``wandb sync <run folder>`` uploads the same file later.
"""

from __future__ import annotations

import json
import re
import shlex
import struct
import zlib
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")  # ident, magic, version
RECORD = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B record log (bad header)")
    pos, pending = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD.size:  # block tail padding
            pos += left_in_block
            continue
        crc, length, kind = RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + RECORD.size : pos + RECORD.size + length]
        if len(chunk) < length:
            break  # a run still being written
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            raise ValueError(f"CRC mismatch in W&B record at byte {pos}")
        pos += RECORD.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_wandb_run(run_dir: str | Path) -> dict:
    """``{"history": [{"_step": n, key: value, ...}], "config": {...}, "summary": {...},
    "files": [...], "group": str, "tags": [...]}`` from an offline run folder (``.../offline-run-*``) or its ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    path = Path(run_dir)
    if path.is_dir():
        found = sorted(path.glob("*.wandb"))
        if not found:
            raise FileNotFoundError(f"no .wandb record log in {path}")
        path = found[0]
    history, config, summary, files, group, tags = [], {}, {}, [], "", []
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            row.setdefault("_step", record.history.step.num)
            history.append(row)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "files":
            files += [f.path for f in record.files.files]
        elif kind == "run":
            group = record.run.run_group or group
            tags = list(record.run.tags) or tags
    return {
        "history": history,
        "config": config,
        "summary": summary,
        "files": files,
        "group": group,
        "tags": tags,
    }


_OFFLINE_RUN = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")


def _sync_supports_append() -> bool:
    """Whether the installed ``wandb sync`` is the older one with ``--append`` (it syncs one
    folder per command; the newer one orders several folders of one run by itself)."""
    from wandb.cli import cli

    return any(p.name == "append" for p in cli.sync.params)


def sync_commands(wandb_dir: str | Path, append: bool | None = None) -> list[str]:
    """The shell commands that upload the offline runs under ``wandb_dir`` (``offline-run-
    <YYYYMMDD_HHMMSS>-<id>`` folders), one list entry per command, in the order to run them.

    A requeued job resumes its run under the same id in a new folder; syncing those folders one
    by one with plain ``wandb sync`` makes each upload replace the run's history (wandb issues
    #3841, #5865). So the segments of one id go together, oldest first: with the newer
    ``wandb sync`` (``append=False``) as one command, which uploads a run's folders one after
    another in start order into the same run; with the older one (``append=True``, the
    ``--append`` flag of wandb PR #4848) as the first folder, then each later one with
    ``--id <id> --append``. ``append=None`` asks the installed wandb.
    """
    runs: dict[str, list[tuple[str, Path]]] = {}
    for folder in Path(wandb_dir).glob("offline-run-*"):
        match = _OFFLINE_RUN.match(folder.name)
        if match and folder.is_dir():
            runs.setdefault(match.group(2), []).append((match.group(1), folder))
    if append is None and any(len(segments) > 1 for segments in runs.values()):
        append = _sync_supports_append()
    commands = []
    for run_id, segments in sorted(runs.items(), key=lambda item: min(item[1])):
        folders = [shlex.quote(str(folder)) for _, folder in sorted(segments)]
        if len(folders) == 1:
            commands.append(f"wandb sync {folders[0]}")
        elif append:
            commands.append(f"wandb sync --id {shlex.quote(run_id)} {folders[0]}")
            commands += [f"wandb sync --id {shlex.quote(run_id)} --append {f}" for f in folders[1:]]
        else:
            commands.append(f"wandb sync --id {shlex.quote(run_id)} {' '.join(folders)}")
    return commands
