"""The shipped Accelerate configs (configs/accelerate/) parse, and the CPU one really starts a
synchronised process group (with ACCELERATE_USE_CPU=1) or is stopped by train.py's launch check
(without it)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {
    "cpu.yaml": ("MULTI_GPU", 1, True),
    "single_gpu.yaml": ("NO", 1, False),
    "multi_gpu.yaml": ("MULTI_GPU", 1, False),
    "multi_node.yaml": ("MULTI_GPU", 2, False),
}

WORKER = textwrap.dedent(
    """
    import torch
    from accelerate import Accelerator
    from pare.launch import LaunchError, check_launch, run_entry_point

    def main():
        accelerator = Accelerator()
        check_launch(accelerator.num_processes)
        total = accelerator.reduce(torch.ones(()), "sum")
        print(f"rank {accelerator.process_index} of {accelerator.num_processes}: sum {int(total)}")
        # Leave the group together: a rank exiting while gloo still talks to it can abort.
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return 0

    run_entry_point(main, (LaunchError,))
    """
)


def test_every_accelerate_config_parses():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    for name, (kind, machines, cpu) in EXPECTED.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert config.distributed_type.value == kind, name
        assert config.num_machines == machines, name
        assert bool(config.use_cpu) == cpu, name
        if machines > 1:
            assert config.num_processes % machines == 0  # the total over all nodes


@pytest.mark.slow
@pytest.mark.parametrize("use_cpu_env", [True, False])
def test_cpu_config_starts_a_group_only_with_the_variable(tmp_path, use_cpu_env):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    result = subprocess.run(
        [accelerate, "launch", "--config_file", str(CONFIGS / "cpu.yaml")]
        + ["--main_process_port", "29571", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if use_cpu_env:
        assert result.returncode == 0, result.stderr[-2000:]
        # Both ranks share one stdout pipe, so their lines can interleave mid-line.
        assert sorted(re.findall(r"rank \d of \d: sum \d", result.stdout)) == [
            "rank 0 of 2: sum 2",
            "rank 1 of 2: sum 2",
        ]
    else:
        assert result.returncode != 0
        assert "unsynchronised copies" in result.stderr
