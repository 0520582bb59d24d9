"""Packing synthetic 3DPW and MPII into shards: alignment, resumability, bad input, verification."""

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pare.body.joints import GT_SLOTS, KEYPOINTS_49
from pare.data.packing.pack import pack_3dpw, pack_mpii
from pare.data.packing.samples import STORED_CROP_CONTEXT, STORED_CROP_MAX
from pare.data.packing.shard_writer import ShardOptions
from pare.data.packing.verify import verify_split

# (OpenPose slot, ground-truth slot) pairs of the joints both blocks take from SMPL's skeleton.
SHARED_SLOTS = [
    (KEYPOINTS_49.index(f"op_{side}_{joint}"), KEYPOINTS_49.index(f"{side}_{joint}", 25))
    for side in ("left", "right")
    for joint in ("shoulder", "elbow", "wrist", "knee", "ankle")
]

ROOT = Path(__file__).parents[3]
OPTS = ShardOptions(maxcount=6, progress=False)


def _samples(folder):
    samples = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _digests(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))
    }


def test_manifest_and_webdataset_reading(packed):
    for name in ("3dpw", "mpii"):
        manifest = json.loads((packed / name / "manifest.json").read_text())
        assert manifest["__kind__"] == "wids-shard-index-v1" and manifest["schema_version"] == 2
        assert manifest["num_samples"] == sum(s["nsamples"] for s in manifest["shardlist"]) > 0
        assert (
            len(manifest["keypoint_layout"]) == 49
            and manifest["crop"]["max_size"] == STORED_CROP_MAX
        )
        urls = [str(packed / name / s["url"]) for s in manifest["shardlist"]]
        seen = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))  # a second reader
        assert len(seen) == manifest["num_samples"]
        assert all({"jpg", "npz", "json"} <= set(s) for s in seen)
        assert len({s["__key__"] for s in seen}) == len(seen)
        assert not any("." in s["__key__"] for s in seen)
    # Globally shuffled: the first shard mixes sequences.
    first = json.loads((packed / "3dpw" / "manifest.json").read_text())["shardlist"][0]["url"]
    with tarfile.open(packed / "3dpw" / first) as tar:
        sequences = {
            json.loads(tar.extractfile(m).read())["sequence"]
            for m in tar
            if m.name.endswith(".json")
        }
    assert len(sequences) > 1


def test_keypoints_and_part_labels_line_up_with_the_person(packed, test_output):
    samples = _samples(packed / "3dpw")
    tiles, on_body, total = [], 0, 0
    for key, s in sorted(samples.items()):
        image = np.asarray(Image.open(io.BytesIO(s["jpg"])))
        parts = np.asarray(Image.open(io.BytesIO(s["png"])))
        z = np.load(io.BytesIO(s["npz"]))
        assert (
            image.shape[0] == image.shape[1] <= STORED_CROP_MAX
            and parts.shape == ((image.shape[0] + 1) // 2,) * 2
        )
        # Independent geometry: the crop intrinsics project the camera-frame joints onto the
        # stored 2D keypoints (OpenPose joints that are SMPL joints).
        uvw = z["joints_3d"] @ z["intrinsics"].T
        proj = uvw[:, :2] / uvw[:, 2:]
        # The ground-truth slots are those joints' projections; the OpenPose detections of
        # joints SMPL has (shoulders, elbows, wrists, knees, ankles) lie on the same points.
        kp = z["keypoints_2d"]
        assert np.abs(kp[GT_SLOTS, :2] - proj).max() < 1.0 and (kp[GT_SLOTS, 2] == 1).all()
        for op_slot, gt_slot in SHARED_SLOTS:
            if kp[op_slot, 2] > 0:
                assert np.hypot(*(kp[op_slot, :2] - kp[gt_slot, :2])) < 1.0, key
        # Keypoints land on the rendered person: its (half-resolution) part map, within 2 px.
        half = parts.shape[0] / image.shape[0]
        for x, y, c in z["keypoints_2d"]:
            x, y = x * half, y * half
            if c > 0 and 2 <= x < parts.shape[1] - 2 and 2 <= y < parts.shape[0] - 2:
                total += 1
                on_body += parts[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].any()
        # And the part map covers the person in the image (differs from the backdrop).
        if len(tiles) < 4:
            parts = np.asarray(
                Image.fromarray(parts).resize(image.shape[1::-1], Image.Resampling.NEAREST)
            )
            overlay = image.astype(float)
            overlay[parts > 0] = 0.5 * overlay[parts > 0] + [127, 0, 127]
            tiles.append(overlay.clip(0, 255).astype(np.uint8))
    assert total > 50 and on_body / total > 0.95
    Image.fromarray(
        np.concatenate([np.asarray(Image.fromarray(t).resize((200, 200))) for t in tiles], 1)
    ).save(test_output / "packed_3dpw_parts.png")


def test_mpii_eft_samples_are_pseudo_gt(packed):
    samples = _samples(packed / "mpii")
    with_fit = [s for s in samples.values() if "png" in s]
    assert with_fit and len(with_fit) < len(samples)
    for s in with_fit:
        z = np.load(io.BytesIO(s["npz"]))
        assert z["has_smpl"] and z["is_pseudo_gt"] and not z["has_joints_3d"]
    for s in samples.values():
        z = np.load(io.BytesIO(s["npz"]))
        annotated = z["keypoints_2d"][:, 2] > 0
        assert annotated.sum() >= 6
        assert np.all(z["keypoints_2d"][~annotated] == 0)


def test_mpii_joints_are_stored_in_spins_ground_truth_slots(raw, packed):
    """Each annotated MPII joint, moved into the crop, sits at SPIN's slot for it: 25 +
    joints_idx[id] (SPIN's datasets/preprocess/mpii.py), so the pelvis is 'Pelvis (MPII)' (39),
    the upper neck 'Neck (LSP)' (37) and the hips the LSP hips (27, 28), not SMPL's joints."""
    from pare.data.packing.readers import Skips, read_mpii

    joints_idx = [0, 1, 2, 3, 4, 5, 14, 15, 12, 13, 6, 7, 8, 9, 10, 11]
    people = {
        f"mpii_{Path(p.image).stem}_r{p.rect}": p
        for p in read_mpii(raw / "mpii" / "mpii_human_pose_v1_u12_1.mat", Skips())
    }
    checked = 0
    for key, s in _samples(packed / "mpii").items():
        z = np.load(io.BytesIO(s["npz"]))
        person = people[key]
        box = z["crop_box"]  # the crop only scales and shifts: x_crop = a (x - x0)
        seen = np.flatnonzero(person.keypoints[:, 2] > 0)
        kp = z["keypoints_2d"]
        assert set(np.flatnonzero(kp[:, 2] > 0)) == {25 + joints_idx[i] for i in seen}
        # The scale from two annotated joints, then every joint through the same map.
        i, j = seen[:2]
        a = np.linalg.norm(
            kp[25 + joints_idx[i], :2] - kp[25 + joints_idx[j], :2]
        ) / np.linalg.norm(person.keypoints[i, :2] - person.keypoints[j, :2])
        for m in seen:
            expected = a * (person.keypoints[m, :2] - box[:2])
            np.testing.assert_allclose(kp[25 + joints_idx[m], :2], expected, atol=0.05)
            checked += 1
    assert checked > 50


def test_verify_passes_then_catches_a_flipped_byte(packed, tmp_path):
    import shutil

    copy = tmp_path / "3dpw"
    shutil.copytree(packed / "3dpw", copy)
    checked, problems = verify_split(copy)
    assert checked > 0 and problems == []
    shard = sorted(copy.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0x01  # inside the first member's content
    shard.write_bytes(bytes(data))
    _, problems = verify_split(copy)
    assert any(shard.name in p and "sha256" in p for p in problems)
    out = subprocess.run(
        [sys.executable, str(ROOT / "shards" / "verify.py"), str(copy)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and shard.name in out.stderr


def test_parallel_and_serial_packing_are_byte_identical(raw, packed, tmp_path):
    pack_3dpw(
        raw / "3dpw",
        "train",
        tmp_path / "par",
        "standin",
        ShardOptions(maxcount=6, workers=2, progress=False),
    )
    assert _digests(tmp_path / "par") == _digests(packed / "3dpw")


@pytest.mark.slow
def test_kill_then_rerun_gives_identical_shards(raw, packed, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(ROOT / "shards" / "pack_3dpw.py"),
        "--root",
        str(raw / "3dpw"),
        "--split",
        "train",
        "--out",
        str(out),
        "--maxcount",
        "6",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        journal = out / ".progress.json"
        if journal.is_file() and len(json.loads(journal.read_text())["shards"]) >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "packing finished before it could be killed"
    assert len(_digests(out)) < len(_digests(packed / "3dpw"))
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _digests(out) == _digests(packed / "3dpw")
    assert not list(out.glob("*.tmp"))


def test_bad_input_is_skipped_and_counted(raw, tmp_path):
    import shutil

    broken = tmp_path / "3dpw"
    shutil.copytree(raw / "3dpw", broken)
    train = sorted((broken / "sequenceFiles" / "train").glob("*.pkl"))
    with open(train[0], "rb") as f:
        seq = pickle.load(f, encoding="latin1")
    frame = int(np.flatnonzero(np.all([v.astype(bool) for v in seq["campose_valid"]], axis=0))[0])
    image = broken / "imageFiles" / seq["sequence"] / f"image_{frame:05d}.jpg"
    image.write_bytes(b"\xff\xd8\xff not really a jpeg")  # every actor in this frame loses it
    victim = broken / "sequenceFiles" / "train" / "zz_truncated.pkl"
    victim.write_bytes(train[0].read_bytes()[:500])
    # With worker processes: a sample error raised in a worker must travel back to the parent
    # (an unpicklable exception once killed the pool's result thread and hung the packer).
    parallel = ShardOptions(maxcount=6, workers=2, progress=False)
    result = pack_3dpw(broken, "train", tmp_path / "out", "standin", parallel)
    manifest = json.loads(result["manifest"].read_text())
    assert manifest["skipped"]["unreadable_sequence"] == 1
    assert manifest["skipped"].get("corrupt_image", 0) >= (
        1 if image.parent.name in str(train[0]) else 0
    )
    assert "zz_truncated.pkl" in manifest["skipped_examples"]["unreadable_sequence"][0]
    mpii = json.loads(
        pack_mpii(raw / "mpii", "train", tmp_path / "mpii", "standin", OPTS)["manifest"].read_text()
    )
    assert mpii["skipped"]["no_annopoints"] > 0
    strict = subprocess.run(
        [
            sys.executable,
            str(ROOT / "shards" / "pack_3dpw.py"),
            "--root",
            str(broken),
            "--split",
            "train",
            "--out",
            str(tmp_path / "strict"),
            "--strict",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert strict.returncode == 2 and "--strict" in strict.stderr


def test_missing_root_names_the_expected_path(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "shards" / "pack_3dpw.py"),
            "--root",
            str(tmp_path / "nope"),
            "--split",
            "train",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        out.returncode == 2
        and str(tmp_path / "nope") in out.stderr
        and "sequenceFiles" in out.stderr
    )


def test_malformed_mat_entry_is_skipped_and_counted(raw, tmp_path):
    import shutil

    import scipy.io

    broken = tmp_path / "mpii"
    shutil.copytree(raw / "mpii", broken)
    mat = scipy.io.loadmat(broken / "mpii_human_pose_v1_u12_1.mat")
    annolist = mat["RELEASE"]["annolist"][0, 0]
    for i in range(annolist.shape[1]):  # the first annotated person gets an impossible joint id
        rects = annolist[0, i]["annorect"]
        if rects.size and "annopoints" in rects.dtype.names and rects[0, 0]["annopoints"].size:
            rects[0, 0]["annopoints"][0, 0]["point"][0, 0]["id"] = np.array([[99]], np.uint8)
            break
    scipy.io.savemat(broken / "mpii_human_pose_v1_u12_1.mat", {"RELEASE": mat["RELEASE"]})
    train = pack_mpii(broken, "train", tmp_path / "t", "standin", OPTS)
    val = pack_mpii(broken, "val", tmp_path / "v", "standin", OPTS)
    skipped = [json.loads(r["manifest"].read_text())["skipped"] for r in (train, val)]
    assert sum(s.get("malformed_annotation", 0) for s in skipped) == 1


def test_maxsize_bounds_shards(raw, tmp_path):
    options = ShardOptions(maxcount=1000, maxsize=60_000, progress=False)
    result = pack_3dpw(raw / "3dpw", "train", tmp_path / "small", "standin", options)
    manifest = json.loads(result["manifest"].read_text())
    assert len(manifest["shardlist"]) > 2
    for shard in manifest["shardlist"]:
        assert shard["filesize"] <= 60_000 + 20_000 or shard["nsamples"] == 1  # tar padding aside


def test_slices_then_merge_equal_one_process(raw, packed, tmp_path):
    from pare.data.packing.shard_writer import PackError

    out = tmp_path / "sliced"
    for index in (2, 0, 1):  # any order, as array tasks finish
        result = pack_3dpw(
            raw / "3dpw",
            "train",
            out,
            "standin",
            ShardOptions(maxcount=6, progress=False, slice_index=index, num_slices=3),
        )
        assert result["manifest"] is None
    assert not list(out.glob("*.tar"))  # slices only, until the merge
    merge = ShardOptions(maxcount=6, progress=False, num_slices=3, merge=True)
    result = pack_3dpw(raw / "3dpw", "train", out, "standin", merge)
    assert _digests(out) == _digests(packed / "3dpw")
    assert json.loads(result["manifest"].read_text()) == json.loads(
        (packed / "3dpw" / "manifest.json").read_text()
    )
    assert not (out / ".slices").exists()

    # A merge with a slice missing names it and the command that makes it.
    pack_3dpw(
        raw / "3dpw",
        "train",
        tmp_path / "partial",
        "standin",
        ShardOptions(maxcount=6, progress=False, slice_index=0, num_slices=2),
    )
    merge = ShardOptions(maxcount=6, progress=False, num_slices=2, merge=True)
    with pytest.raises(PackError, match=r"slice 1 of 2 is missing.*--slice 1 --num-slices 2"):
        pack_3dpw(raw / "3dpw", "train", tmp_path / "partial", "standin", merge)


def test_slices_keep_skipped_samples_in_order(raw, tmp_path):
    """A corrupt image inside a slice: the merged manifest counts and names it as one process."""
    import shutil

    broken = tmp_path / "3dpw"
    shutil.copytree(raw / "3dpw", broken)
    for image in sorted((broken / "imageFiles").rglob("image_0000[12].jpg")):
        image.write_bytes(b"\xff\xd8\xff not a jpeg")
    single = pack_3dpw(broken, "train", tmp_path / "one", "standin", OPTS)
    for index in range(4):
        options = ShardOptions(maxcount=6, progress=False, slice_index=index, num_slices=4)
        pack_3dpw(broken, "train", tmp_path / "four", "standin", options)
    merge = ShardOptions(maxcount=6, progress=False, num_slices=4, merge=True)
    merged = pack_3dpw(broken, "train", tmp_path / "four", "standin", merge)
    one = json.loads(single["manifest"].read_text())
    four = json.loads(merged["manifest"].read_text())
    assert one["skipped"].get("corrupt_image", 0) > 0
    assert four == one
    assert _digests(tmp_path / "four") == _digests(tmp_path / "one")


@pytest.mark.parametrize("fault", ["truncated-eft", "missing-body-model"])
def test_a_worker_that_cannot_start_stops_the_packer(raw, tmp_path, fault):
    """With several workers, a sample builder that cannot be made (it loads the body model) used
    to make the pool restart dying workers forever; it must stop the packer with the one-line
    error, as one worker does. A truncated EFT file stops it before the workers start."""
    eft = raw / "mpii" / "MPII_ver01.json"
    body_model = "standin"
    if fault == "truncated-eft":
        cut = tmp_path / "MPII_ver01.json"
        cut.write_bytes(eft.read_bytes()[:1000])
        eft, named = cut, str(cut)
    else:
        body_model = str(tmp_path / "smpl_typo")
        (tmp_path / "smpl_typo").mkdir()
        named = "smpl_typo"
    cmd = [sys.executable, str(ROOT / "shards" / "pack_mpii.py"), "--root", str(raw / "mpii")]
    cmd += ["--split", "train", "--out", str(tmp_path / "o"), "--eft", str(eft)]
    cmd += ["--body-model", body_model, "--workers", "2", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_a_large_person_keeps_the_pixels_the_224_input_needs(tmp_path):
    """PARE's 224 px input covers the box times the augmentation scale (at least scale_min):
    from a person whose box is >= 400 px in the image, the stored crop must keep at least
    224 / scale_min px of box so that the input is never upsampled."""
    from pare.config import AugmentConfig
    from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw

    needed = 224 / AugmentConfig().scale_min  # 298.7 px
    make_3dpw(tmp_path / "raw", Synthetic3DPWConfig(sequences=1, frames=2, seed=3), progress=False)
    result = pack_3dpw(tmp_path / "raw", "train", tmp_path / "out", "standin", OPTS)
    large = 0
    for s in _samples(tmp_path / "out").values():
        z = np.load(io.BytesIO(s["npz"]))
        box_px = 200 * float(z["box_scale"])  # the person box in the 1080 x 1920 frame
        stored = np.asarray(Image.open(io.BytesIO(s["jpg"]))).shape[0]
        if box_px >= 400:
            large += 1
            assert stored / STORED_CROP_CONTEXT >= needed, (box_px, stored)
    assert large > 0, "no person with a box of 400 px or more in the frames"
    manifest = json.loads(result["manifest"].read_text())
    assert manifest["crop"]["max_size"] == STORED_CROP_MAX  # the manifest records the cap
    # The cap is an argument: a smaller one is recorded and packs smaller crops.
    small = pack_3dpw(
        tmp_path / "raw",
        "train",
        tmp_path / "small",
        "standin",
        ShardOptions(maxcount=6, progress=False, stored_crop_max=320),
    )
    assert json.loads(small["manifest"].read_text())["crop"]["max_size"] == 320
    sizes = [
        np.asarray(Image.open(io.BytesIO(s["jpg"]))).shape[0]
        for s in _samples(tmp_path / "small").values()
    ]
    assert max(sizes) <= 320
