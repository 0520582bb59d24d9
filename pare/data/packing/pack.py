"""Packers: 3DPW and MPII people -> samples -> shards (see :mod:`pare.data.packing.shard_writer`)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import simplejpeg
from scipy.spatial.transform import Rotation

from pare.body import (
    BODY_MODEL_RECORD,
    GENDER_CODE,
    BodyModelMismatch,
    SMPLBody,
    body_model_identity,
    describe_identity,
    read_body_model_record,
)
from pare.body.joints import GT_SLOTS, MPII16_TO_49, OPENPOSE18_TO_49, to_keypoints_49
from pare.data.packing.keys import key_3dpw, key_mpii
from pare.data.packing.mpii_match import (
    match_eft_fits,
    read_val_list,
    validation_people,
)
from pare.data.packing.readers import (
    DatasetLayoutError,
    PersonFrame3DPW,
    PersonMPII,
    Skips,
    load_mpii,
    mpii_rects,
    read_3dpw_sequence,
    read_eft,
    read_mpii,
    threedpw_sequence_files,
)
from pare.data.packing.samples import (
    STORED_CROP_MAX,
    SampleError,
    box_from_keypoints,
    camera_frame_pose,
    crop_for,
    decode_crop,
    encode_npz,
    encode_png,
    part_map,
    project_joints,
    provenance,
    transform_keypoints,
)
from pare.data.packing.shard_writer import (
    PackError,
    ShardOptions,
    merge_slices,
    pack_lock,
    write_manifest,
    write_shards,
    write_slice,
)

log = logging.getLogger(__name__)
JPEG_QUALITY = 95


# The fix a real dataset root (no body_model.json) needs: its ground truth comes from SMPL.
REAL_SMPL_HINT = (
    "pass --body-model data/body_models/smpl (the real SMPL files; the stand-in only with "
    "--body-model standin)"
)


def resolve_body_model(root: Path, body_model: str | None) -> dict:
    """The identity (:func:`pare.body.body_model_identity`) of the body model to pack ``root``
    with: ``body_model`` if given, else the one ``root/body_model.json`` names (synthetic roots).

    Raises :class:`pare.body.BodyModelMismatch` naming both where the given model, or the named
    model's current files, differ from the root's record, and where neither exists (real data:
    the stand-in is never used unless named)."""
    recorded = read_body_model_record(root)
    if body_model is None:
        if recorded is None:
            raise BodyModelMismatch(
                f"{root} has no {BODY_MODEL_RECORD} (real data) and no body model was given: "
                f"{REAL_SMPL_HINT}"
            )
        identity = body_model_identity(recorded["path"])
        if identity["sha256"] != recorded["sha256"]:
            raise BodyModelMismatch(
                f"{root} was rendered with {describe_identity(recorded)}, but those files are "
                f"now {describe_identity(identity)}; regenerate the data or restore the files"
            )
        return identity
    identity = body_model_identity(body_model)
    if recorded is not None and identity["sha256"] != recorded["sha256"]:
        raise BodyModelMismatch(
            f"{root} was rendered with {describe_identity(recorded)}, not the given "
            f"{describe_identity(identity)}; drop --body-model to use the recorded one"
        )
    return identity


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SampleError("missing_image", f"{path}: {e.strerror}") from None


class ThreeDPWBuilder:
    """Builds 3DPW samples in a worker: camera-frame SMPL, joints, crop and part labels."""

    def __init__(self, body_model: str, stored_crop_max: int = STORED_CROP_MAX) -> None:
        self.bodies = SMPLBody(body_model)
        self.stored_crop_max = stored_crop_max

    def __call__(self, rec: PersonFrame3DPW) -> dict[str, bytes]:
        box = box_from_keypoints(rec.keypoints)
        if box is None:
            raise SampleError("too_few_keypoints", f"{rec.sequence}/{rec.actor}/{rec.frame}")
        crop = crop_for(*box, self.stored_crop_max)
        image = decode_crop(_read_image(rec.image), crop, str(rec.image))
        body = self.bodies.posed_numpy(rec.gender, rec.betas, rec.pose[None], rec.trans[None])
        rot, t = rec.cam_pose[:3, :3], rec.cam_pose[:3, 3]
        to_cam = lambda x: x[0] @ rot.T + t  # noqa: E731 - (N, 3) world -> camera
        k_crop = crop.matrix @ rec.intrinsics
        parts = part_map(
            to_cam(body["vertices"]), self.bodies.faces, self.bodies.part_labels, k_crop, crop.size
        )
        joints_3d = to_cam(body["joints_3d"])  # (24, 3) SPIN's ground-truth joints
        # OpenPose detections in the OpenPose slots (weighted by loss.openpose_weight, 0 as in
        # PARE); the ground-truth slots hold the fit's joints projected into the crop.
        keypoints = transform_keypoints(
            to_keypoints_49(rec.keypoints, OPENPOSE18_TO_49), crop.matrix
        )
        keypoints[GT_SLOTS] = project_joints(joints_3d, k_crop)
        arrays = {
            "keypoints_2d": keypoints,
            "joints_3d": joints_3d,
            "h36m_3d": to_cam(body["h36m_3d"]),
            "pose": camera_frame_pose(rec.pose, rot),
            "betas": rec.betas,
            "gender": GENDER_CODE[rec.gender],
            "has_smpl": True,
            "has_joints_3d": True,
            "is_pseudo_gt": False,
            "intrinsics": k_crop,
            "crop_box": crop.box,
            "box_center": box[0],
            "box_scale": box[1],
            "head_size": 0.0,
        }
        return {
            "__key__": key_3dpw(rec.sequence, rec.actor, rec.frame),
            "jpg": simplejpeg.encode_jpeg(
                np.ascontiguousarray(image), quality=JPEG_QUALITY, colorspace="RGB"
            ),
            "json": provenance(
                dataset="3dpw",
                sequence=rec.sequence,
                frame=rec.frame,
                person=rec.actor,
                image=f"imageFiles/{rec.sequence}/{rec.image.name}",
            ),
            "npz": encode_npz(arrays, f"{rec.sequence}/{rec.actor}/{rec.frame}"),
            "png": encode_png(parts),
        }


def _make_3dpw_builder(body_model: str, stored_crop_max: int) -> ThreeDPWBuilder:
    return ThreeDPWBuilder(body_model, stored_crop_max)


def pack_3dpw(
    root: Path, split: str, out: Path, body_model: str | None, options: ShardOptions
) -> dict:
    """Pack one 3DPW split. Returns ``{"manifest": path, "samples": n, "skipped": {reason: n}}``;
    for one slice of an array job (``options.slice``) ``manifest`` is None and ``slice`` names
    it. ``body_model`` None takes the one the root records (:func:`resolve_body_model`). Raises
    :class:`DatasetLayoutError` or FileNotFoundError for a root that is not 3DPW's layout,
    :class:`pare.body.BodyModelMismatch` for a missing or disagreeing body model, and
    :class:`PackError` for a bad sample under ``options.strict``."""
    root, out = Path(root), Path(out)
    skips = Skips(strict=options.strict)
    records: list[PersonFrame3DPW] = []
    for path in threedpw_sequence_files(root, split):
        records += read_3dpw_sequence(path, root, skips)
    identity = resolve_body_model(root, body_model)
    body_model = identity["path"]
    arguments = {
        "root": str(root),
        "split": split,
        "body_model": body_model,
        "maxcount": options.maxcount,
        "maxsize": options.maxsize,
        "seed": options.seed,
        "stored_crop_max": options.stored_crop_max,
    }
    factory = functools.partial(_make_3dpw_builder, body_model, options.stored_crop_max)
    return _pack(records, factory, out, "3dpw", split, arguments, identity, options, skips)


class MPIIBuilder:
    """Builds MPII samples: crop from objpos/scale, MPII joints in SPIN's ground-truth slots of
    KEYPOINTS_49 (:data:`pare.body.joints.MPII16_TO_49`), and SMPL plus part labels from the
    person's EFT fit where one was joined (``PersonMPII.fit``, checked by
    :func:`pare.data.packing.mpii_match.malformed_fit`; flagged as pseudo ground truth)."""

    def __init__(
        self, root: str, body_model: str, fits: bool, stored_crop_max: int = STORED_CROP_MAX
    ) -> None:
        self.root = Path(root)
        self.stored_crop_max = stored_crop_max
        self.bodies = SMPLBody(body_model) if fits else None

    def __call__(self, person: PersonMPII) -> dict[str, bytes]:
        # MPII's objpos sits on the torso and scale is height / 200; SPIN widens it by 1.25.
        center, scale = person.center, 1.25 * person.scale
        crop = crop_for(center, scale, self.stored_crop_max)
        image_path = self.root / "images" / person.image
        image = decode_crop(_read_image(image_path), crop, str(image_path))
        arrays = {
            "keypoints_2d": transform_keypoints(
                to_keypoints_49(person.keypoints, MPII16_TO_49), crop.matrix
            ),
            "joints_3d": np.zeros((24, 3)),
            "h36m_3d": np.zeros((17, 3)),
            "pose": np.zeros(72),
            "betas": np.zeros(10),
            "gender": GENDER_CODE["neutral"],
            "has_smpl": False,
            "has_joints_3d": False,
            "is_pseudo_gt": False,
            "intrinsics": np.full((3, 3), np.nan),
            "crop_box": crop.box,
            "box_center": center,
            "box_scale": scale,
            # PCKh's unit, 0.6 x the head box's diagonal, in crop pixels (the crop only scales).
            "head_size": 0.6
            * float(np.hypot(*(person.head_box[2:] - person.head_box[:2])))
            * float(crop.matrix[0, 0]),
        }
        sample = {
            "__key__": key_mpii(person.image, person.rect),
            "jpg": simplejpeg.encode_jpeg(
                np.ascontiguousarray(image), quality=JPEG_QUALITY, colorspace="RGB"
            ),
            "json": provenance(
                dataset="mpii", image=person.image, person=person.rect, frame=0, train=person.train
            ),
        }
        if person.fit is not None:
            sample["png"] = self._fit_targets(person.fit, crop, arrays)
        sample["npz"] = encode_npz(arrays, f"{person.image}#{person.rect}")
        return sample

    def _fit_targets(self, fit: dict, crop, arrays: dict) -> bytes:
        """SMPL from an EFT fit; its weak-perspective camera becomes a crop-space perspective one."""
        rot = np.asarray(fit["parm_pose"], dtype=np.float64)
        pose = Rotation.from_matrix(rot).as_rotvec().reshape(72)
        betas = np.asarray(fit["parm_shape"], dtype=np.float64)
        s, tx, ty = fit["parm_cam"]
        body = self.bodies.posed_numpy("neutral", betas, pose[None], np.zeros((1, 3)))
        # Weak perspective s (X + t) in the fit box's normalised coordinates equals a pinhole
        # camera with focal f at depth tz = f / (100 s box_scale); any f works, take 5000.
        f = 5000.0
        box_scale, box_center = float(fit["bbox_scale"]), np.asarray(fit["bbox_center"], float)
        tz = f / (100.0 * s * box_scale)
        shift = np.array([tx, ty, tz])
        k_image = np.array([[f, 0, box_center[0]], [0, f, box_center[1]], [0, 0, 1.0]])
        k_crop = crop.matrix @ k_image
        verts = body["vertices"][0] + shift
        arrays.update(
            joints_3d=body["joints_3d"][0] + shift,
            h36m_3d=body["h36m_3d"][0] + shift,
            pose=pose,
            betas=betas,
            has_smpl=True,
            has_joints_3d=False,
            is_pseudo_gt=True,
            intrinsics=k_crop,
        )
        return encode_png(
            part_map(verts, self.bodies.faces, self.bodies.part_labels, k_crop, crop.size)
        )


def _make_mpii_builder(root: str, body_model: str, fits: bool, stored_crop_max: int) -> MPIIBuilder:
    return MPIIBuilder(root, body_model, fits, stored_crop_max)


def pack_mpii(
    root: Path,
    split: str,
    out: Path,
    body_model: str | None,
    options: ShardOptions,
    eft: Path | None = None,
    min_joints: int = 6,
    val_list: Path | None = None,
) -> dict:
    """Pack MPII's train or val people. Validation people are those ``val_list`` names
    (:func:`pare.data.packing.mpii_match.read_val_list`: HRNet's ``valid.json``, ``IMAGE RECT``
    or ``IMAGE`` lines), else every person of every 10th image; they never go to train, even
    when their image holds training people. ``min_joints`` filters training people only, so
    PCKh is computed on the whole list. EFT fits are joined to people by keypoints
    (:func:`~pare.data.packing.mpii_match.match_eft_fits`). The manifest's ``validation``
    block records the validation person count and the list entries that matched no one, its
    ``eft`` block how many fits joined. Returns what :func:`pack_3dpw` does plus
    ``validation`` (that block), and raises what it does; a bad list raises ValueError."""
    root, out = Path(root), Path(out)
    if split not in ("train", "val"):
        raise ValueError(f"MPII split must be 'train' or 'val', got {split!r}")
    if not (root / "images").is_dir():
        raise FileNotFoundError(
            f"MPII images folder not found: {root / 'images'} (expected beside the .mat file)"
        )
    identity = resolve_body_model(root, body_model)
    body_model = identity["path"]
    skips = Skips(strict=options.strict)
    release = load_mpii(root / "mpii_human_pose_v1_u12_1.mat")
    rects = mpii_rects(release)
    entries = read_val_list(val_list) if val_list is not None else None
    validation = validation_people(rects, entries, str(val_list or ""))
    if validation.unmatched:
        log.warning(
            "%d of %d validation-list entries name no annotated person (first: %s)",
            len(validation.unmatched),
            validation.entries,
            validation.unmatched[0],
        )

    def in_split(index: int, name: str, rect: int) -> bool:
        return ((name, rect) in validation.members) == (split == "val")

    people = read_mpii(release, skips, include=in_split)
    extra = {"validation": validation.record()}
    if eft is not None:
        fits = read_eft(eft)
        images = {p.image for p in people}
        # The other split's people in shared images: a fit of theirs is no one's here.
        others = read_mpii(
            release, Skips(), include=lambda i, name, r: name in images and not in_split(i, name, r)
        )
        match_eft_fits(
            fits, people, others, {r.image for r in rects}, skips, Path(eft).name, split == "train"
        )
    kept = []
    for person in people:
        if split == "train" and (person.keypoints[:, 2] > 0).sum() < min_joints:
            skips.add("too_few_joints", f"{person.image}#{person.rect}")
            continue
        kept.append(person)
    if eft is not None:
        extra["eft"] = {"fits": len(fits), "joined": sum(p.fit is not None for p in kept)}
    arguments = {
        "root": str(root),
        "split": split,
        "body_model": body_model,
        "eft": str(eft) if eft else None,
        "min_joints": min_joints,
        "val_list": str(val_list) if val_list else None,
        "maxcount": options.maxcount,
        "maxsize": options.maxsize,
        "seed": options.seed,
        "stored_crop_max": options.stored_crop_max,
    }
    factory = functools.partial(
        _make_mpii_builder, str(root), body_model, eft is not None, options.stored_crop_max
    )
    result = _pack(kept, factory, out, "mpii", split, arguments, identity, options, skips, extra)
    return result | extra


def _pack(
    records,
    factory,
    out: Path,
    dataset: str,
    split: str,
    arguments: dict,
    body_model: dict,
    options: ShardOptions,
    skips: Skips,
    extra: dict | None = None,
) -> dict:
    """Write the shards and the manifest (plus ``extra``'s blocks); a rerun with other
    arguments, other body-model files or another ``extra`` starts afresh."""
    fingerprint = {k: v for k, v in arguments.items() if k != "root"} | {
        "records": len(records),
        "body_model_sha256": body_model["sha256"],
    }
    if extra:
        fingerprint["extra"] = extra
    prefix = f"{dataset}-{split}"
    if options.slice_index is not None:
        built = write_slice(
            records,
            factory,
            out,
            prefix,
            options,
            fingerprint,
            options.slice_index,
            options.num_slices,
        )
        return {
            "manifest": None,
            "slice": built["slice"],
            "samples": built["samples"],
            "skipped": skips.counts,
        }
    with pack_lock(out):
        if options.merge:
            shards = merge_slices(
                out, prefix, options, fingerprint, options.num_slices, len(records), skips
            )
        else:
            shards = write_shards(records, factory, out, prefix, options, fingerprint, skips)
        samples = sum(s["nsamples"] for s in shards)
        if not samples:
            # An empty split would make training stop at its first read and turn in-loop
            # evaluation off: no manifest, so nothing can use it.
            raise PackError(
                f"no sample of {dataset} {split} could be packed from {arguments['root']} "
                f"({len(records)} records; skipped: {skips.counts or 'none'}); check the "
                "dataset root and the skip reasons"
            )
        manifest = write_manifest(
            out, dataset, split, arguments, shards, skips, body_model, extra or {}
        )
    return {"manifest": manifest, "samples": samples, "skipped": skips.counts}


# What a packer entry point reports as a one-line error (exit 2) rather than a traceback.
PACK_ERRORS = (DatasetLayoutError, FileNotFoundError, PackError, ValueError)


def summary(result: dict) -> str:
    """The one line a packer entry point prints for a :func:`pack_3dpw`/:func:`pack_mpii` result."""
    where = result["manifest"] or f"slice {result['slice']} (merge with --merge)"
    line = f"{result['samples']} samples -> {where}; skipped: {result['skipped'] or 'none'}"
    if "validation" in result:
        v = result["validation"]
        line += f"; validation people: {v['people']} ({v['source']}"
        line += f", {v['unmatched_entries']} list entries unmatched)" if v["list_entries"] else ")"
    if "eft" in result:
        line += f"; EFT fits joined: {result['eft']['joined']} of {result['eft']['fits']}"
    return line
