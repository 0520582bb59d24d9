"""Run by tests under `accelerate launch` (2 CPU processes): iterate the training stream over
uneven shards and report, per rank, how many batches it saw."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from pare.config import load_config
from pare.data.stream import Source, shard_urls, train_loader


def main() -> None:
    shards, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    accelerator = Accelerator()
    cfg = load_config(
        [], ["data.batch_size=4", "data.num_workers=2", "data.shuffle_buffer=20"]
    ).data
    sources = [
        Source("3dpw", shard_urls(str(shards / "3dpw")), 0.5),
        Source("mpii", shard_urls(str(shards / "mpii")), 0.5),
    ]
    count = 0
    for batch in train_loader(sources, cfg, steps_per_epoch=steps, epoch=0, seed=1):
        count += 1
        # A collective per step: a rank with fewer batches would hang here.
        total = accelerator.reduce(torch.tensor(batch["image"].shape[0]), reduction="sum")
        assert int(total) == 4 * accelerator.num_processes
    accelerator.wait_for_everyone()
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps({"batches": count}))


if __name__ == "__main__":
    main()
