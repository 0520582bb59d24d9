"""Check a body model end to end: load it, run smplx at batch 64, compare the rest skeleton.

    python train/check_body_model.py [--model-path standin|FOLDER|FILE] [--out DIR]

Prints a table of rest-pose joints against SMPL's reference skeleton and the rest positions of
``J_regressor_extra.npy``'s nine joints, and writes a preview PNG (front and side views coloured
by body part).
"""

from __future__ import annotations

import argparse
import colorsys
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pare.body.joints import EXTRA_9, SMPL_24
from pare.body.model import (
    GENDERS,
    STANDIN,
    build_body_model,
    load_eval_assets,
    resolve_model_file,
)
from pare.body.standin import REST_JOINTS
from pare.config import ConfigError
from pare.io_utils import atomic_open


def mesh_topology(faces: np.ndarray, n_vertices: int) -> dict[str, int | bool]:
    """Euler characteristic, components and whether every edge has exactly two faces."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    parent = np.arange(n_vertices)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in unique:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    roots = {find(i) for i in range(n_vertices)}
    return {
        "vertices": n_vertices,
        "faces": len(faces),
        "euler": n_vertices - len(unique) + len(faces),
        "components": len(roots),
        "closed_manifold": bool(np.all(counts == 2)),
    }


def preview_png(
    vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, path: Path, size: int = 480
) -> Path:
    """Front and side views, flat-shaded by part, drawn back to front (painter's algorithm)."""
    side = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # look from the subject's left
    image = Image.new("RGB", (2 * size, size), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    centre = vertices.mean(0)
    extent = np.abs(vertices - centre).max() * 1.1
    for panel, rot in enumerate((np.eye(3), side)):
        p = (vertices - centre) @ rot.T
        tri = p[faces]  # (F, 3, 3)
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        for i in np.argsort(tri[:, :, 2].mean(1)):
            if normal[i, 2] <= 0:
                continue
            hue = (labels[faces[i, 0]] * 0.381966) % 1.0
            shade = 0.35 + 0.65 * normal[i, 2]
            colour = tuple(int(255 * c * shade) for c in colorsys.hsv_to_rgb(hue, 0.55, 1.0))
            xy = [
                (panel * size + size / 2 * (1 + x / extent), size / 2 * (1 - y / extent))
                for x, y in tri[i, :, :2]
            ]
            draw.polygon(xy, fill=colour)
    with atomic_open(path) as f:
        image.save(f, format="PNG")
    return path


def _vec(v: np.ndarray) -> str:
    return " ".join(f"{x:+.3f}" for x in v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path", default=STANDIN, help="'standin', a folder, or a .pkl/.npz file"
    )
    parser.add_argument("--gender", default="neutral", choices=GENDERS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/body_check"))
    args = parser.parse_args(argv)

    try:
        model_file = resolve_model_file(args.model_path, args.gender)
        model = build_body_model(args.model_path, gender=args.gender, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "STAND-IN body model (generated; not SMPL)" if model.is_standin else "SMPL body model"
    print(f"{kind}: {model_file}")

    faces = model.faces.astype(np.int64)
    topo = mesh_topology(faces, model.v_template.shape[0])
    print("mesh: " + ", ".join(f"{k}={v}" for k, v in topo.items()))

    generator = torch.Generator().manual_seed(0)
    betas = torch.randn(args.batch_size, 10, generator=generator)
    pose = 0.2 * torch.randn(args.batch_size, 69, generator=generator)
    with torch.no_grad():
        start = time.perf_counter()
        out = model(betas=betas, body_pose=pose, global_orient=torch.zeros(args.batch_size, 3))
        elapsed = time.perf_counter() - start
        rest = model(
            betas=torch.zeros(1, 10),
            body_pose=torch.zeros(1, 69),
            global_orient=torch.zeros(1, 3),
            transl=torch.zeros(1, 3),
        )
    print(
        f"forward: batch {args.batch_size} -> vertices {tuple(out.vertices.shape)}, joints "
        f"{tuple(out.joints.shape)} in {elapsed * 1000:.1f} ms"
    )

    joints = rest.joints[0, :24].numpy()
    error_mm = 1000 * np.linalg.norm(joints - REST_JOINTS, axis=1)
    print("\nrest-pose joints vs SMPL's neutral reference skeleton (m)")
    print(f"{'joint':<16}{'reference':>26}{'model':>26}{'error mm':>10}")
    for name, ref, got, err in zip(SMPL_24, REST_JOINTS, joints, error_mm, strict=True):
        print(f"{name:<16}{_vec(ref):>26}{_vec(got):>26}{err:>10.2f}")
    print(f"{'mean':<16}{'':>52}{error_mm.mean():>10.2f}")

    try:
        assets = load_eval_assets(model_file.parent)
        labels = assets.part_labels
    except FileNotFoundError as e:  # the mesh preview still helps; say what is missing
        print(f"\nnote: {e}")
        labels = model.lbs_weights.argmax(1).numpy()
    except ConfigError as e:  # part labels in another order, a wrong regressor file
        print(f"error: {e}", file=sys.stderr)
        return 2
    else:
        extra = assets.extra_regressor @ rest.vertices[0].double().numpy()  # (9, 3)
        print("\nJ_regressor_extra joints at rest (m; SPIN's 'Right Hip' .. 'Head (H36M)')")
        for name, point in zip(EXTRA_9, extra, strict=True):
            print(f"{name:<16}{_vec(point):>26}")
    png = preview_png(rest.vertices[0].numpy(), faces, labels, args.out / "body_preview.png")
    print(f"\npreview: {png}")
    return 0 if topo["vertices"] == 6890 and topo["faces"] == 13776 else 1
