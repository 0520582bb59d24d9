import os

import pytest

from tests.slurm.cluster import LocalCluster, missing_programs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_programs()
    if missing:
        if os.geteuid() == 0:
            pytest.fail(
                f"SLURM programs missing: {missing}. Install them with `make slurm-deps` "
                "(apt-get install slurmd slurmctld slurm-client munge)"
            )
        pytest.skip(f"needs root and Debian's SLURM packages ({missing} missing)")
    local = LocalCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield local.start()
    finally:
        local.stop()
