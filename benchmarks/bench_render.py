"""Renderer and synthetic-3DPW speed: ms per rendered frame, frames per second generated.

    python benchmarks/bench_render.py [--repeats 5] [--frames 6] [--out benchmarks/results/render.json]

Runs on one core (thread pools pinned to 1 before numpy/torch load), so that the numbers are per core. Rows:
one 6890-vertex body at 512x512, the same at 3DPW's 1080x1920, and end-to-end synthetic 3DPW
generation (render + JPEG + annotations) at 1080x1920 and at 270x480.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pare.body import build_body_model, load_eval_assets  # noqa: E402
from pare.data.synthetic.scene import camera_at  # noqa: E402
from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw  # noqa: E402
from pare.io_utils import write_json_atomic  # noqa: E402
from pare.render import Mesh, render  # noqa: E402


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=6, help="frames per generation run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/render.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model = build_body_model("standin")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        verts = (
            model(body_pose=0.3 * torch.randn(1, 69, generator=gen)).vertices[0].double().numpy()
        )
    mesh = Mesh(verts, model.faces.astype(np.int64), load_eval_assets("standin").part_labels)
    rows = []
    for width, height, focal in ((512, 512, 700.0), (1080, 1920, 1960.0)):
        camera = camera_at(
            np.array([0.5, 0.0, 3.0]), np.array([0.0, -0.3, 0.0]), width, height, focal
        )
        seconds = best_time(lambda camera=camera: render([mesh], camera), args.repeats)
        rows.append(
            {
                "what": f"render one body {width}x{height}",
                "ms_per_frame": 1000 * seconds,
                "fps": 1 / seconds,
            }
        )
    for width, height in ((1080, 1920), (270, 480)):
        cfg = Synthetic3DPWConfig(
            sequences=1, frames=args.frames, seed=0, width=width, height=height
        )
        with tempfile.TemporaryDirectory() as tmp:
            make_3dpw(
                Path(tmp) / "warm", Synthetic3DPWConfig(1, 1, 0, width, height), progress=False
            )
            seconds = best_time(
                lambda cfg=cfg, tmp=tmp: make_3dpw(Path(tmp) / "run", cfg, progress=False), 1
            )
        per_frame = seconds / args.frames
        rows.append(
            {
                "what": f"generate 3DPW {width}x{height}",
                "ms_per_frame": 1000 * per_frame,
                "fps": 1 / per_frame,
            }
        )

    print(f"{'what':<34}{'ms/frame':>10}{'frames/s':>10}   (1 core)")
    for row in rows:
        print(f"{row['what']:<34}{row['ms_per_frame']:>10.1f}{row['fps']:>10.2f}")
    result = {"benchmark": "render", "threads": 1, "rows": rows, "torch": torch.__version__}
    print(f"wrote {write_json_atomic(args.out, result, indent=2)}")
    return result


if __name__ == "__main__":
    main()
