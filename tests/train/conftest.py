from functools import partial

import pytest

from tests.conftest import accelerate_launch
from tests.train.test_train import ENV, POOLS, RESUME_EXTRA, _args, _concurrently, _train_into


@pytest.fixture(autouse=True)
def _background_runs_end_with_their_test():
    """Wait for every run a test (or a fixture it asked for) started in the background."""
    yield
    while POOLS:
        POOLS.pop().shutdown(wait=True)


# The uninterrupted two-process run: test_faults.py resumes a SIGTERM'd run against its weights,
# test_train.py checks that its ranks stayed in sync. One run serves both.
TWO_PROCESS_EXTRA = (*RESUME_EXTRA, "data.num_workers=1")


@pytest.fixture(scope="session")
def two_process_run(packed, tmp_path_factory):
    """``train.py`` under two CPU processes with ``TWO_PROCESS_EXTRA``, started in the background
    when first asked for: a future whose ``.result()`` waits and gives the run folder."""
    out = tmp_path_factory.mktemp("two_process") / "straight"
    (run,) = _concurrently(
        partial(
            _train_into,
            out,
            _args(packed, out, *TWO_PROCESS_EXTRA),
            accelerate_launch(2, 29542),
            dict(ENV, ACCELERATE_USE_CPU="1"),
        )
    )
    return run
