"""Synthetic 3DPW: sequences rendered from the body model, written in 3DPW's on-disk format.

    imageFiles/<sequence>/image_%05d.jpg
    sequenceFiles/{train,validation,test}/<sequence>.pkl

Every key of the real pickles is written with the real types and shapes, as a Python 2 pickle
(see :mod:`pare.data.synthetic.py2pickle`): world-frame ``poses``/``trans`` at 30 Hz and 60 Hz, ``betas``
of 10 or 300 (zero-padded) values, ``genders``, OpenPose-18 ``poses2d`` with confidences (all
zero in frames with fewer than 6 detections), ``jointPositions``, a moving world-to-camera
``cam_poses``, ``cam_intrinsics``, ``campose_valid`` with invalid frames, ``img_frame_ids``,
and the clothed-body and texture keys. One or two actors per sequence; some frames have a
prop between the camera and a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pare.body import SMPLBody, write_body_model_record
from pare.body.joints import OPENPOSE18_TO_49
from pare.data.synthetic import motion
from pare.data.synthetic.py2pickle import dump_py2
from pare.data.synthetic.scene import (
    GROUND_Y,
    box_mesh,
    camera_at,
    ground_mesh,
    keypoint_visibility,
    random_appearance,
    sky_background,
    write_jpeg,
)
from pare.render import Mesh, render

SPLITS = ("train", "validation", "test")
REAL_WIDTH, REAL_HEIGHT, REAL_FOCAL = 1080, 1920, 1960.0
MIN_DETECTIONS = 6


@dataclass
class Synthetic3DPWConfig:
    sequences: int = 3
    frames: int = 60
    seed: int = 0
    width: int = REAL_WIDTH
    height: int = REAL_HEIGHT
    jpeg_quality: int = 90
    model_path: str = "standin"
    # Sequences per split in each round of the round-robin (train, validation, test).
    split_ratio: tuple[int, int, int] = (1, 1, 1)


def split_plan(sequences: int, ratio: tuple[int, int, int] = (1, 1, 1)) -> list[tuple[str, str]]:
    """(split, activity) of each sequence. Splits go round-robin in ``ratio`` (so small sets
    still have every split with a non-zero share); activities go round-robin within each split
    (so three sequences of a split cover all three activities)."""
    if len(ratio) != len(SPLITS) or min(ratio) < 0 or sum(ratio) == 0:
        raise ValueError(f"split ratio {ratio} needs three counts >= 0, not all zero")
    pattern = [split for split, count in zip(SPLITS, ratio, strict=True) for _ in range(count)]
    seen = dict.fromkeys(SPLITS, 0)
    plan = []
    for index in range(sequences):
        split = pattern[index % len(pattern)]
        plan.append((split, motion.ACTIVITIES[seen[split] % len(motion.ACTIVITIES)]))
        seen[split] += 1
    return plan


def make_3dpw(out: str | Path, cfg: Synthetic3DPWConfig, progress: bool = True) -> list[Path]:
    """Write ``cfg.sequences`` sequences under ``out``, and ``out/body_model.json`` naming the
    body model that rendered them (packers use it); returns the pickle paths."""
    out = Path(out)
    bodies = SMPLBody(cfg.model_path)
    write_body_model_record(out, cfg.model_path)
    written = []
    bar = tqdm(
        total=cfg.sequences * cfg.frames, desc="3DPW frames", unit="frame", disable=not progress
    )
    for index, (split, activity) in enumerate(split_plan(cfg.sequences, cfg.split_ratio)):
        rng = np.random.default_rng([cfg.seed, index])
        written.append(_make_sequence(out, index, split, activity, rng, bodies, cfg, bar))
    bar.close()
    return written


def _make_sequence(
    out: Path,
    index: int,
    split: str,
    activity: str,
    rng: np.random.Generator,
    bodies: SMPLBody,
    cfg: Synthetic3DPWConfig,
    bar: tqdm,
) -> Path:
    n = cfg.frames
    times_60 = np.arange(2 * n) / 60.0
    n_actors = 1 + int(rng.random() < 0.5)
    name = f"synthetic_{activity}_{index:02d}"

    actors = []
    for a in range(n_actors):
        gender = "m" if rng.random() < 0.5 else "f"
        betas = np.clip(rng.normal(0, 1, 10), -2.5, 2.5)
        start = np.array(
            [(a - (n_actors - 1) / 2) * 1.2 + rng.uniform(-0.2, 0.2), 0.0, rng.uniform(-0.3, 0.3)]
        )
        act = activity if a == 0 else str(rng.choice(motion.ACTIVITIES))
        body_pose = motion.body_pose_sequence(rng, times_60, act).reshape(2 * n, 69)
        heading, trans = motion.heading_and_path(rng, times_60, act, start)
        pose = np.concatenate([motion.global_orient(heading), body_pose], 1)  # (2N, 72)
        model_gender = "male" if gender == "m" else "female"
        # Keep the lowest point of the body on the ground, whatever the pose.
        lowest = bodies.posed_numpy(model_gender, betas, pose, np.zeros_like(trans))["vertices"][
            ..., 1
        ].min(1)
        trans[:, 1] = GROUND_Y - lowest
        body = bodies.posed_numpy(model_gender, betas, pose[::2], trans[::2])
        actors.append(
            {
                "gender": gender,
                "model_gender": model_gender,
                "betas": betas,
                "pose": pose,
                "trans": trans,
                "body": body,
                "appearance": random_appearance(rng, bodies.part_labels, bodies.rest_vertices),
                "betas_stored": betas
                if rng.random() < 0.5
                else np.concatenate([betas, np.zeros(290)]),
            }
        )

    # A camera that orbits slowly around the actors and follows them; its height and distance
    # stay in 3DPW's range (hand-held, about 1.2-1.8 m above the ground, 3-7 m away).
    centre = np.mean([act["trans"][::2] for act in actors], axis=0)  # (N, 3)
    azimuth = (
        rng.uniform(-0.5, 0.5)
        + 0.25 * np.sin(np.linspace(0, rng.uniform(1, 3), n))
        + np.linspace(0, rng.uniform(-0.4, 0.4), n)
    )
    distance = rng.uniform(3.5, 6.0) + 0.3 * np.sin(np.linspace(0, 2, n))
    cam_height = GROUND_Y + rng.uniform(1.2, 1.8)
    focal = REAL_FOCAL * cfg.width / REAL_WIDTH
    cameras = []
    for i in range(n):
        target = centre[i] + [0, -0.35, 0]
        position = target + distance[i] * np.array([np.sin(azimuth[i]), 0, np.cos(azimuth[i])])
        position[1] = cam_height
        cameras.append(camera_at(position, target, cfg.width, cfg.height, focal))

    # Sometimes a prop (a box, as a passing cart would be) crosses between the camera and the
    # first actor, so that person is partly occluded in some frames.
    props: list[Mesh | None] = [None] * n
    if rng.random() < 0.6:
        mid = n // 2
        eye = cameras[mid].R.T @ -cameras[mid].t
        root = actors[0]["body"]["smpl_joints"][mid, 0]
        size = np.array([rng.uniform(0.4, 0.8), rng.uniform(0.8, 1.3), 0.3])
        color = rng.uniform(0.2, 0.8, 3)
        right = cameras[mid].R[0]
        for i in range(n):
            where = root + 0.4 * (eye - root) + right * 2.5 * (2 * i / max(n - 1, 1) - 1)
            where[1] = GROUND_Y + size[1] / 2
            props[i] = box_mesh(where, size, color)

    ground = ground_mesh(centre.mean(0), seed=int(rng.integers(1 << 31)))
    background = sky_background(rng, cfg.width, cfg.height)
    image_dir = out / "imageFiles" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    poses2d = [np.zeros((n, 3, 18)) for _ in actors]
    for i in range(n):
        people = [
            Mesh(
                act["body"]["vertices"][i],
                bodies.faces,
                bodies.part_labels,
                act["appearance"].vertex_colors,
            )
            for act in actors
        ]
        meshes = [*people, ground, *([props[i]] if props[i] is not None else [])]
        layers = render(meshes, cameras[i], background)
        for a, act in enumerate(actors):
            joints = act["body"]["keypoints_3d"][i, OPENPOSE18_TO_49]  # OpenPose-18 order
            xy, found = keypoint_visibility(layers.mesh, layers.depth, cameras[i], joints, a)
            if found.sum() >= MIN_DETECTIONS:
                conf = np.where(found, rng.uniform(0.5, 0.95, 18), 0.0)
                poses2d[a][i] = np.stack(
                    [np.where(found, xy[:, 0], 0), np.where(found, xy[:, 1], 0), conf]
                )
        write_jpeg(image_dir / f"image_{i:05d}.jpg", layers.image, cfg.jpeg_quality)
        bar.update()

    cam_poses = np.stack(
        [np.block([[c.R, c.t[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]) for c in cameras]
    )
    sequence = {
        "sequence": name,
        "genders": [act["gender"] for act in actors],
        "betas": [act["betas_stored"] for act in actors],
        "betas_clothed": [act["betas"] + rng.normal(0, 0.1, 10) for act in actors],
        "v_template_clothed": [
            bodies.shaped_template(act["model_gender"], act["betas"]) for act in actors
        ],
        "texture_maps": [act["appearance"].texture for act in actors],
        "poses": [act["pose"][::2] for act in actors],
        "trans": [act["trans"][::2] for act in actors],
        "poses_60Hz": [act["pose"] for act in actors],
        "trans_60Hz": [act["trans"] for act in actors],
        "jointPositions": [act["body"]["smpl_joints"].reshape(n, 72) for act in actors],
        "poses2d": poses2d,
        "cam_poses": cam_poses,
        "cam_intrinsics": cameras[0].K.copy(),
        "campose_valid": [_campose_valid(rng, n) for _ in actors],
        "img_frame_ids": 2 * np.arange(n),
    }
    return dump_py2(sequence, out / "sequenceFiles" / split / f"{name}.pkl")


def _campose_valid(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly valid, with one or two short runs of invalid frames (as in the real data). Clips
    shorter than 8 frames (many short sequences, for pose variety) keep a run with probability
    n / 16, so they too stay mostly valid."""
    valid = np.ones(n, np.int64)
    for _ in range(int(rng.integers(1, 3))):
        start = int(rng.integers(0, n))
        length = int(rng.integers(1, max(2, min(6, n // 8)) + 1))
        if n >= 8 or rng.random() < n / 16:
            valid[start : start + length] = 0
    return valid
