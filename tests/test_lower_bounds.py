"""The oldest numpy and scipy that pyproject.toml allows can read SMPL files and the pickles the
project writes: a second, minimal virtual environment with exactly those versions imports
``pare.safe_pickle`` and reads the stand-in's SMPL file and a 3DPW export."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]

_READER = """
import json, sys
import numpy, scipy
from pare.safe_pickle import load_pickle, to_numpy
smpl = load_pickle(sys.argv[1])
export = load_pickle(sys.argv[2])
print(json.dumps({
    "numpy": numpy.__version__, "scipy": scipy.__version__,
    "v_template_sum": float(to_numpy(smpl["v_template"]).sum()),
    "J_regressor": list(to_numpy(smpl["J_regressor"]).shape),
    "jointPositions_sum": float(numpy.asarray(export["jointPositions"]).sum()),
}))
"""


def _lower_bound(package: str) -> str:
    """The ``>=`` bound pyproject.toml declares (a regex: tomllib needs Python 3.11)."""
    (bound,) = re.findall(rf'"{package}\s*>=\s*([0-9.]+)', (ROOT / "pyproject.toml").read_text())
    return bound


@pytest.mark.slow
def test_the_declared_lowest_numpy_and_scipy_read_smpl_and_exports(tmp_path, standin_folder):
    from pare.export import write_prediction_file
    from pare.safe_pickle import load_pickle, to_numpy

    numpy_min, scipy_min = _lower_bound("numpy"), _lower_bound("scipy")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The oldest allowed minor release of each, latest patch; binary wheels only (no compiler).
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:",
         f"numpy=={numpy_min}.*", f"scipy=={scipy_min}.*"],
        check=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    arrays = {
        "jointPositions": rng.normal(size=(1, 3, 24, 3)),
        "orientations": np.zeros((1, 3, 9, 3, 3)),
    }
    export = write_prediction_file(tmp_path / "downtown_walk_00.pkl", arrays)
    smpl_file = standin_folder / "SMPL_NEUTRAL.pkl"
    out = subprocess.run(
        [str(python), "-c", _READER, str(smpl_file), str(export)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["numpy"].startswith(numpy_min + ".") and got["scipy"].startswith(scipy_min + ".")
    here = load_pickle(smpl_file)
    assert got["v_template_sum"] == pytest.approx(float(to_numpy(here["v_template"]).sum()))
    assert got["J_regressor"] == [24, 6890]
    assert got["jointPositions_sum"] == pytest.approx(float(arrays["jointPositions"].sum()))
