"""Run by tests under `accelerate launch` (2 CPU processes): iterate the training stream over
uneven shards and report, per rank, how many batches it saw; then evaluate a split with 2 workers
per rank and report the gathered per-sample results."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from pare.config import load_config
from pare.data.streaming.stream import ShardSource, eval_loader, shard_urls, train_loader
from pare.distributed import gather_per_sample


def main() -> None:
    shards, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    n_train = int(sys.argv[4])  # how many 3DPW training shards to stream
    accelerator = Accelerator()
    cfg = load_config(
        [], ["data.batch_size=4", "data.num_workers=2", "data.shuffle_buffer=20"]
    ).data
    sources = [
        ShardSource(shard_urls(str(shards / "3dpw"))[:n_train], 0.5),
        ShardSource(shard_urls(str(shards / "mpii")), 0.5),
    ]
    count = 0
    for batch in train_loader(sources, cfg, steps_per_epoch=steps, epoch=0, seed=1):
        count += 1
        # A collective per step: a rank with fewer batches would hang here.
        total = accelerator.reduce(torch.tensor(batch["image"].shape[0]), reduction="sum")
        assert int(total) == 4 * accelerator.num_processes
    accelerator.wait_for_everyone()

    keys, depth = [], []
    for batch in eval_loader(shard_urls(str(shards / "3dpw_val")), batch_size=3, num_workers=2):
        keys += batch["__key__"]
        depth.append(batch["joints_3d"][:, 0, 2])  # a per-sample value to gather: pelvis depth
    local = len(keys)
    keys, values = gather_per_sample(keys, {"depth": torch.cat(depth).numpy()})
    report = {"batches": count, "eval_local": local, "eval_keys": keys}
    report["eval_depth"] = values["depth"].tolist()
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(report))
    # Leave the group together: a rank exiting while gloo still talks to it can abort (SIGABRT).
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
