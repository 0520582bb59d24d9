"""A real two-node SLURM cluster on localhost for the job-script tests (Debian's slurmctld,
slurmd and munge; pare's reference recipe): no systemd, no cgroups, everything under one
folder, every daemon started here in the foreground and stopped here by its PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def _free_port_base() -> int:
    # Ports away from slurm's defaults (6817-6819), different per test process.
    return 17000 + (os.getpid() % 500) * 8


class LocalCluster:
    """``nodes`` slurmd "nodes" (n1, n2, ...) on 127.0.0.1, one CPU each, in partition debug."""

    def __init__(self, root: Path, nodes: int = 2) -> None:
        self.root, self.nodes = Path(root), nodes
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.procs: dict[str, subprocess.Popen] = {}

    def _conf_text(self) -> str:
        base = _free_port_base()
        r = self.root
        return "\n".join(
            [
                "ClusterName=paretest",
                "SlurmctldHost=localhost(127.0.0.1)",
                f"SlurmctldPort={base}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # cred_expire (default 120 s) is also how long a requeued job waits before it
                # may start again: two minutes of the preemption test doing nothing.
                f"AuthInfo=socket={self.socket},cred_expire=10",
                "SlurmUser=root",
                "SlurmdUser=root",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/backfill",
                "SlurmdParameters=config_overrides",
                "ReturnToService=2",
                "MpiDefault=none",
                "JobRequeue=1",
                "MinJobAge=600",
                # The requeued job, once it may start, waits for the next scheduling pass (by
                # default up to 30 s for backfill, 60 s for the main loop).
                "SchedulerParameters=defer_batch=0,bf_interval=1,sched_interval=1",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool-%n'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                f"SlurmctldLogFile={r / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'slurmd-%n.log'}",
                f"NodeName=n[1-{self.nodes}] NodeHostname=localhost NodeAddr=127.0.0.1 "
                f"Port=[{base + 1}-{base + self.nodes}] CPUs=1 RealMemory=4000 State=UNKNOWN",
                f"PartitionName=debug Nodes=n[1-{self.nodes}] Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def start(self, timeout: float = 60.0) -> LocalCluster:
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._conf_text())
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--force"], check=True)
        key.chmod(0o600)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for i in range(1, self.nodes + 1):
            self._spawn(f"slurmd-n{i}", ["slurmd", "-D", "-N", f"n{i}", "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "the nodes did not become idle")
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.root / f"{name}.stdout", "wb") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{message}: {self.logs()}")

    def _all_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return len(states) == self.nodes and all(s == "idle" for s in states.values())

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(cmd),
            env=kwargs.pop("env", self.env),
            capture_output=True,
            text=True,
            check=check,
            **kwargs,
        )

    def job_state(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (the first record; array tasks by ARRAYJOB_TASK)."""
        out = self.run("scontrol", "show", "job", "-o", job, check=False).stdout
        fields = {}
        for item in out.split():
            if "=" in item:
                key, value = item.split("=", 1)
                fields.setdefault(key, value)
        return fields

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stdout")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every daemon started here, by PID: slurmd first, munged last."""
        order = sorted(self.procs, key=lambda n: (n == "munged", n == "slurmctld"))
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
