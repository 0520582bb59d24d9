"""Synthetic MPII Human Pose: rendered images and ``mpii_human_pose_v1_u12_1.mat``.

    images/<9 digits>.jpg
    mpii_human_pose_v1_u12_1.mat         RELEASE struct, as the real file
    MPII_ver01.json                      EFT-format fits for part of the people (optional)
    synthetic_ground_truth.json          exact cameras and SMPL parameters (not in real MPII)

The ``.mat`` reproduces the real file's quirks that readers must survive: coordinates stored as
uint8, uint16 or float64 within one struct; ``is_visible`` as a number, an empty array, a
string, or missing; points not sorted by id; people with fewer than 16 points or without
``annopoints``; images with several people or none; test images whose rects hold only
``scale`` and ``objpos``; 1-based (MATLAB) coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from pare.body import SMPLBody, write_body_model_record
from pare.body.joints import MPII16_TO_49
from pare.data.synthetic import motion
from pare.data.synthetic.scene import (
    GROUND_Y,
    box_mesh,
    camera_at,
    ground_mesh,
    random_appearance,
    sky_background,
    write_jpeg,
)
from pare.io_utils import atomic_open, write_json_atomic
from pare.render import Mesh, render

MAT_NAME = "mpii_human_pose_v1_u12_1.mat"
EFT_NAME = "MPII_ver01.json"
GT_NAME = "synthetic_ground_truth.json"
IMAGE_SIZES = ((1280, 720), (960, 540), (640, 480), (720, 1280))
_ACTS = {
    "walk": ("walking", "walking, general", 1),
    "wave": ("miscellaneous", "waving", 2),
    "squat": ("conditioning exercise", "squats", 3),
}


@dataclass
class SyntheticMPIIConfig:
    images: int = 100
    seed: int = 0
    image_scale: float = 1.0  # 1.0 = MPII-like frame sizes; smaller is faster
    eft: bool = False
    jpeg_quality: int = 90
    model_path: str = "standin"


def make_mpii(out: str | Path, cfg: SyntheticMPIIConfig, progress: bool = True) -> Path:
    """Write ``cfg.images`` images and the annotation file under ``out``, and
    ``out/body_model.json`` naming the body model that rendered them (packers use it); returns
    the .mat path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    bodies = SMPLBody(cfg.model_path)
    write_body_model_record(out, cfg.model_path)
    annolist, img_train, single_person, acts, eft_items, truth = [], [], [], [], [], []
    videos = [f"vid{k:08d}" for k in range(max(1, cfg.images // 10))]
    for i in tqdm(range(cfg.images), desc="MPII images", unit="image", disable=not progress):
        rng = np.random.default_rng([cfg.seed, i])
        name = f"{i:09d}.jpg"
        train = rng.random() < 0.8
        people, image = _render_image(rng, bodies, cfg)
        write_jpeg(out / "images" / name, image, cfg.jpeg_quality)
        if rng.random() < 0.03:
            people = []  # an image nobody annotated
        rects = [_rect(rng, p, train) for p in people]
        annolist.append(
            {
                "image": name,
                "rects": rects,
                "train": train,
                "vididx": int(rng.integers(1, len(videos) + 1)),
                "frame_sec": int(rng.integers(1, 600)),
            }
        )
        img_train.append(int(train))
        single_person.append([k + 1 for k, p in enumerate(people) if p["alone"]])
        acts.append(
            _ACTS[people[0]["activity"]] if people and rng.random() < 0.85 else ("", "", -1)
        )
        truth.append({"image": name, "people": [p["truth"] for p in people]})
        if cfg.eft and train:
            eft_items += [
                _eft_item(p, name) for p in people if p["points"] is not None and rng.random() < 0.7
            ]
    release = _release_struct(annolist, img_train, single_person, acts, videos)
    mat_path = out / MAT_NAME
    with atomic_open(mat_path) as f:
        scipy.io.savemat(f, {"RELEASE": release})
    write_json_atomic(out / GT_NAME, truth)
    if cfg.eft:
        # EFT documents annotId for COCO only; here it numbers the fits, never MPII's rect
        # index, so a packer must join each fit to its person by keypoints.
        for k, item in enumerate(eft_items):
            item["annotId"] = k
        write_json_atomic(
            out / EFT_NAME,
            {"ver": 0.1, "data": eft_items, "meta": {"dataset": "mpii", "synthetic": True}},
        )
    return mat_path


def _render_image(
    rng: np.random.Generator, bodies: SMPLBody, cfg: SyntheticMPIIConfig
) -> tuple[list[dict], np.ndarray]:
    base_w, base_h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    width, height = (
        max(32, round(base_w * cfg.image_scale)),
        max(32, round(base_h * cfg.image_scale)),
    )
    n_people = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    focal = max(width, height) * rng.uniform(0.9, 1.3)
    people = []
    for k in range(n_people):
        activity = str(rng.choice(motion.ACTIVITIES))
        times = np.array([rng.uniform(0, 5)])
        body_pose = motion.body_pose_sequence(rng, np.concatenate([times, times + 0.1]), activity)[
            :1
        ].reshape(1, 69)
        heading = np.array([rng.normal(0, 0.8)])
        pose = np.concatenate([motion.global_orient(heading), body_pose], 1)
        gender = "male" if rng.random() < 0.5 else "female"
        betas = np.clip(rng.normal(0, 1, 10), -2.5, 2.5)
        trans = np.array(
            [[(k - (n_people - 1) / 2) * rng.uniform(0.9, 1.6), 0.0, -rng.uniform(0, 3)]]
        )
        lowest = bodies.posed_numpy(gender, betas, pose, np.zeros((1, 3)))["vertices"][..., 1].min()
        trans[0, 1] = GROUND_Y - lowest
        body = bodies.posed_numpy(gender, betas, pose, trans)
        people.append(
            {
                "activity": activity,
                "gender": gender,
                "betas": betas,
                "pose": pose[0],
                "trans": trans[0],
                "body": body,
                "appearance": random_appearance(rng, bodies.part_labels, bodies.rest_vertices),
                "rest_root": bodies.rest_root(gender, betas),
            }
        )
    centre = np.mean([p["trans"] for p in people], axis=0)
    eye = centre + [rng.uniform(-1.5, 1.5), 0, rng.uniform(4.0, 7.0)]
    eye[1] = GROUND_Y + rng.uniform(1.0, 2.2)
    camera = camera_at(eye, centre + [0, -0.3, 0], width, height, focal)
    meshes = [
        Mesh(
            p["body"]["vertices"][0],
            bodies.faces,
            bodies.part_labels,
            p["appearance"].vertex_colors,
        )
        for p in people
    ]
    meshes.append(ground_mesh(centre, seed=int(rng.integers(1 << 31))))
    if rng.random() < 0.25:
        where = people[0]["body"]["smpl_joints"][0, 0] + 0.4 * (
            eye - people[0]["body"]["smpl_joints"][0, 0]
        )
        size = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.5, 1.1), 0.3])
        where[0] += rng.uniform(-0.4, 0.4)
        where[1] = GROUND_Y + size[1] / 2
        meshes.append(box_mesh(where, size, rng.uniform(0.2, 0.8, 3)))
    layers = render(meshes, camera, sky_background(rng, width, height))

    boxes = []
    for k, p in enumerate(people):
        verts = p["body"]["vertices"][0]
        xy = camera.project(verts)
        # MPII's joints as SPIN reads them: the body's joints in the slots MPII fills.
        joints = p["body"]["keypoints_3d"][0, MPII16_TO_49]  # (16, 3) in MPII order
        jxy = camera.project(joints)
        jz = camera.to_camera(joints)[:, 2]
        px = np.floor(jxy).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
        visible = np.zeros(16, bool)
        idx = np.nonzero(inside)[0]
        # MPII marks a joint invisible when anything covers it, the person's own limbs too.
        visible[idx] = (layers.mesh[px[idx, 1], px[idx, 0]] == k) & (
            layers.depth[px[idx, 1], px[idx, 0]] > jz[idx] - 0.12
        )
        head = xy[bodies.part_labels == 15]
        box = np.concatenate([xy.min(0), xy.max(0)])
        boxes.append(box)
        p.update(
            points=(jxy, inside, visible) if inside.sum() >= 4 else None,
            head=np.concatenate([head.min(0), head.max(0)]),
            scale=(box[3] - box[1]) / 200.0,
            objpos=0.5 * (box[:2] + box[2:]),
            truth={
                "gender": p["gender"],
                "betas": p["betas"].tolist(),
                "pose": p["pose"].tolist(),
                "trans": p["trans"].tolist(),
                "K": camera.K.tolist(),
                "R": camera.R.tolist(),
                "t": camera.t.tolist(),
            },
            camera=camera,
        )
    for k, p in enumerate(people):
        others = [b for j, b in enumerate(boxes) if j != k]
        b = boxes[k]
        p["alone"] = all(b[2] < o[0] or o[2] < b[0] or b[3] < o[1] or o[3] < b[1] for o in others)
    return people, layers.image


def _number(rng: np.random.Generator, value: float) -> np.ndarray:
    """A (1, 1) MATLAB number in the smallest type that fits, like the real file: clicked
    (integer) coordinates as uint8/uint16, the rest as double."""
    if rng.random() < 0.6 and value >= 0:
        v = round(value)
        return np.array([[v]], dtype=np.uint8 if v < 256 else np.uint16)
    return np.array([[value]], dtype=np.float64)


def _rect(rng: np.random.Generator, person: dict, train: bool) -> dict:
    """One annorect entry (1-based coordinates)."""
    scale = np.array([[person["scale"]]])
    objpos = {
        "x": _number(rng, person["objpos"][0] + 1),
        "y": _number(rng, person["objpos"][1] + 1),
    }
    if not train:
        return {"scale": scale, "objpos": objpos}
    rect = {
        "x1": _number(rng, person["head"][0] + 1),
        "y1": _number(rng, person["head"][1] + 1),
        "x2": _number(rng, person["head"][2] + 1),
        "y2": _number(rng, person["head"][3] + 1),
        "scale": scale,
        "objpos": objpos,
        "annopoints": None,
    }
    if person["points"] is None or rng.random() < 0.08:
        return rect  # not annotated: no annopoints
    jxy, inside, visible = person["points"]
    style = rng.choice(["number", "number", "number", "string", "empty", "missing"])
    points = []
    for j in rng.permutation(np.nonzero(inside)[0]):  # in-image joints only, in no particular order
        point = {
            "x": _number(rng, jxy[j, 0] + 1),
            "y": _number(rng, jxy[j, 1] + 1),
            "id": np.array([[j]], np.uint8),
        }
        if style != "missing":
            kind = style if rng.random() < 0.7 else rng.choice(["number", "string", "empty"])
            if kind == "number":
                point["is_visible"] = np.array([[int(visible[j])]], np.uint8)
            elif kind == "string":
                point["is_visible"] = str(int(visible[j]))
            else:
                point["is_visible"] = np.zeros((0, 0))
        points.append(point)
    rect["annopoints"] = {"point": points}
    return rect


def _struct_array(items: list[dict], fields: list[str] | None = None) -> np.ndarray:
    """A 1 x N MATLAB struct array (fields shared by all elements)."""
    fields = fields or list(dict.fromkeys(k for item in items for k in item))
    arr = np.zeros((1, len(items)), dtype=[(f, object) for f in fields])
    for i, item in enumerate(items):
        for f in fields:
            arr[0, i][f] = _to_mat(item.get(f))
    return arr


def _to_mat(value):
    if value is None:
        return np.zeros((0, 0))
    if isinstance(value, dict):
        if "point" in value:
            return _struct_array(
                [{"point": _struct_array(value["point"], _point_fields(value["point"]))}]
            )
        return _struct_array([value])
    return value


def _point_fields(points: list[dict]) -> list[str]:
    return (
        ["x", "y", "id", "is_visible"]
        if any("is_visible" in p for p in points)
        else ["x", "y", "id"]
    )


def _release_struct(annolist, img_train, single_person, acts, videos) -> dict:
    entries = []
    for a in annolist:
        rects = a["rects"]
        if not rects:
            annorect = np.zeros((0, 0))
        elif a["train"]:
            annorect = _struct_array(
                rects, ["x1", "y1", "x2", "y2", "annopoints", "scale", "objpos"]
            )
        else:
            annorect = _struct_array(rects, ["scale", "objpos"])
        entries.append(
            {
                "image": {"name": a["image"]},
                "annorect": annorect,
                "frame_sec": np.array([[a["frame_sec"]]], np.uint16),
                "vididx": np.array([[a["vididx"]]], np.uint16),
            }
        )
    annolist_arr = np.zeros(
        (1, len(entries)), dtype=[(f, object) for f in ("image", "annorect", "frame_sec", "vididx")]
    )
    for i, e in enumerate(entries):
        annolist_arr[0, i]["image"] = _struct_array([e["image"]])
        annolist_arr[0, i]["annorect"] = e["annorect"]
        annolist_arr[0, i]["frame_sec"] = e["frame_sec"]
        annolist_arr[0, i]["vididx"] = e["vididx"]
    single = np.empty((len(single_person), 1), dtype=object)
    for i, ids in enumerate(single_person):
        single[i, 0] = np.array(ids, np.uint8).reshape(-1, 1) if ids else np.zeros((0, 0))
    act = np.zeros(
        (len(acts), 1), dtype=[("cat_name", object), ("act_name", object), ("act_id", object)]
    )
    for i, (cat, name, act_id) in enumerate(acts):
        act[i, 0]["cat_name"], act[i, 0]["act_name"] = cat, name
        act[i, 0]["act_id"] = np.array([[act_id]], np.int16)
    video_list = np.empty((1, len(videos)), dtype=object)
    for i, v in enumerate(videos):
        video_list[0, i] = v
    return {
        "annolist": annolist_arr,
        "img_train": np.array([img_train], np.uint8),
        "version": "12",
        "single_person": single,
        "act": act,
        "video_list": video_list,
    }


def _eft_item(person: dict, image_name: str) -> dict:
    """An EFT-style fit: camera-frame SMPL rotations, betas, a weak-perspective crop camera and
    the person's MPII joints (image pixels) in SPIN's 49 slots; ``annotId`` is set by the caller."""
    camera = person["camera"]
    jxy, inside, _ = person["points"]
    rot = Rotation.from_rotvec(person["pose"].reshape(24, 3)).as_matrix()  # (24, 3, 3) local
    rot[0] = camera.R @ rot[0]  # global orientation into the camera frame
    kp = jxy[inside]
    lo, hi = kp.min(0), kp.max(0)
    center = 0.5 * (lo + hi)
    scale = 1.2 * float(max(hi - lo)) / 200.0
    # Weak perspective for the crop: normalised crop coords = s * (X + t), matched at the root.
    # With the camera-frame global rotation, SMPL (zero translation) keeps the root joint at its
    # rest position J0, so camera-frame points are the model's output shifted by root_cam - J0.
    root_cam = camera.to_camera(person["body"]["smpl_joints"][0, 0])
    origin_cam = root_cam - person["rest_root"]
    f = camera.K[0, 0]
    c_img = camera.K[:2, 2]
    s = f / (100.0 * scale * root_cam[2])
    t_xy = origin_cam[:2] + (c_img - center) * root_cam[2] / f
    gt = np.zeros((49, 3))
    for j in range(16):
        if inside[j]:
            # SPIN's slot for MPII joint j; annotated: confidence 1, as SPIN stores MPII
            gt[MPII16_TO_49[j]] = [jxy[j, 0], jxy[j, 1], 1.0]
    return {
        "parm_pose": rot.tolist(),
        "parm_shape": person["betas"].tolist(),
        "parm_cam": [s, *t_xy.tolist()],
        "bbox_scale": scale,
        "bbox_center": center.tolist(),
        "gt_keypoint_2d": gt.tolist(),
        "imageName": image_name,
        "smpltype": "smpl",
    }
