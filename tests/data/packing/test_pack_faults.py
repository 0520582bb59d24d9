"""Packing faults (#15): --strict, non-finite and malformed records, stale manifests after a
killed repack, byte-stable reruns, merge recovery, the folder lock and empty splits."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import scipy.io
import torch

from pare.data.packing import pack as pack_module
from pare.data.packing.pack import pack_3dpw, pack_mpii
from pare.data.packing.readers import Skips, StrictSkip, read_3dpw_sequence, read_mpii
from pare.data.packing.shard_writer import LOCK, MANIFEST, PackError, ShardOptions
from pare.data.packing.verify import verify_split
from pare.data.streaming.stream import ShardsDisagree, shard_urls
from pare.data.synthetic.py2pickle import dump_py2
from pare.io_utils import atomic_open

OPTS = ShardOptions(maxcount=6, progress=False)
STRICT = ShardOptions(maxcount=6, progress=False, strict=True)
MAT = "mpii_human_pose_v1_u12_1.mat"


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # how SPIN and PARE read 3DPW


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(folder):
    return {p.name: _sha(p) for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def standin_bodies(standin_folder):
    from pare.body import SMPLBody

    return SMPLBody(str(standin_folder))


@pytest.fixture
def threedpw_copy(raw, tmp_path):
    root = tmp_path / "3dpw"
    shutil.copytree(raw / "3dpw", root)
    return root


# ------------------------------------------------------------------ 3DPW records


def _first_valid_frame(seq, actor=0):
    return int(np.flatnonzero(np.asarray(seq["campose_valid"][actor]).astype(bool))[0])


@pytest.mark.parametrize(
    "fault, reason, named",
    [
        ("nan pose", "nonfinite_values", "frame {f}: poses"),
        ("inf 2d keypoint", "nonfinite_values", "frame {f}: poses2d"),
        ("nan camera pose", "nonfinite_values", "frame {f}: cam_poses"),
        ("9 betas", "malformed_record", "actor 0: betas has 9 values"),
        ("short trans", "malformed_record", "actor 0: trans has shape"),
        ("unknown gender", "malformed_record", "actor 0: genders is 'x'"),
        ("nan intrinsics", "unreadable_sequence", "cam_intrinsics"),
    ],
)
def test_a_malformed_3dpw_record_is_skipped_naming_file_and_field(
    threedpw_copy, fault, reason, named
):
    path = sorted((threedpw_copy / "sequenceFiles" / "train").glob("*.pkl"))[0]
    seq = _load(path)
    before = len(read_3dpw_sequence(path, threedpw_copy, Skips()))
    f = _first_valid_frame(seq)
    if fault == "nan pose":
        seq["poses"][0][f, 5] = np.nan
    elif fault == "inf 2d keypoint":
        seq["poses2d"][0][f, 0, 3] = np.inf
    elif fault == "nan camera pose":
        seq["cam_poses"][f, 0, 3] = np.nan
    elif fault == "9 betas":
        seq["betas"][0] = seq["betas"][0][:9]
    elif fault == "short trans":
        seq["trans"][0] = seq["trans"][0][:-1]
    elif fault == "unknown gender":
        seq["genders"][0] = "x"
    elif fault == "nan intrinsics":
        seq["cam_intrinsics"][0, 0] = np.nan
    dump_py2(seq, path)

    skips = Skips()
    records = read_3dpw_sequence(path, threedpw_copy, skips)
    valid = [np.asarray(v).astype(bool) for v in seq["campose_valid"]]
    # Every actor shares the camera: its NaN costs that frame of each actor who has it.
    expected = sum(v[f] for v in valid) if fault == "nan camera pose" else 1
    assert skips.counts[reason] == expected, skips.counts
    example = skips.examples[reason][0]
    assert path.name in example and named.format(f=f) in example, example
    lost = {"nonfinite_values": expected, "malformed_record": int(valid[0].sum())}
    assert len(records) == before - lost.get(reason, before)  # only that frame, actor or file
    with pytest.raises(StrictSkip, match=f"--strict: {reason}: .*{path.name}"):
        read_3dpw_sequence(path, threedpw_copy, Skips(strict=True))


def test_strict_packing_fails_on_defects_but_not_on_the_protocols_filters(
    raw, threedpw_copy, tmp_path
):
    # The synthetic data has invalid camera poses, MPII test images and unannotated rects: the
    # protocol's filters, which --strict accepts.
    clean = pack_3dpw(raw / "3dpw", "train", tmp_path / "clean", "standin", STRICT)
    assert json.loads(clean["manifest"].read_text())["skipped"].get("campose_invalid", 0) > 0
    mpii = pack_mpii(raw / "mpii", "train", tmp_path / "mpii", "standin", STRICT)
    assert {"test_image", "no_annopoints"} <= set(mpii["skipped"])

    path = sorted((threedpw_copy / "sequenceFiles" / "train").glob("*.pkl"))[0]
    seq = _load(path)
    seq["poses"][0][_first_valid_frame(seq), 0] = np.nan
    dump_py2(seq, path)
    with pytest.raises(StrictSkip, match="nonfinite_values"):
        pack_3dpw(threedpw_copy, "train", tmp_path / "strict", "standin", STRICT)
    # A sample-level defect (a corrupt JPEG) fails too, in worker processes as well.
    seq["poses"][0][_first_valid_frame(seq), 0] = 0.0
    dump_py2(seq, path)
    for image in (threedpw_copy / "imageFiles").rglob("image_00001.jpg"):
        image.write_bytes(b"\xff\xd8\xff not a jpeg")
    for workers in (1, 2):
        options = ShardOptions(maxcount=6, progress=False, strict=True, workers=workers)
        with pytest.raises(StrictSkip, match="corrupt_image"):
            pack_3dpw(threedpw_copy, "train", tmp_path / f"strict{workers}", "standin", options)
    # And a rerun with --strict over a non-strict pack that skipped it.
    pack_3dpw(threedpw_copy, "train", tmp_path / "lenient", "standin", OPTS)
    with pytest.raises(StrictSkip, match="corrupt_image"):
        pack_3dpw(threedpw_copy, "train", tmp_path / "lenient", "standin", STRICT)


# ------------------------------------------------------------------ MPII records


def _annotated_rects(release):
    """(image index, rect) of each annotated training person, in file order."""
    annolist = release["annolist"][0, 0]
    for i in range(annolist.shape[1]):
        rects = annolist[0, i]["annorect"]
        if not (rects.size and "annopoints" in (rects.dtype.names or ())):
            continue
        for r in range(rects.shape[1]):
            if rects[0, r]["annopoints"].size and release["img_train"][0, 0][0, i]:
                yield i, rects[0, r]


def test_degenerate_mpii_people_are_skipped_naming_the_field(raw, tmp_path):
    root = tmp_path / "mpii"
    shutil.copytree(raw / "mpii", root)
    mat = scipy.io.loadmat(root / MAT)
    people = list(_annotated_rects(mat["RELEASE"]))
    before = len(read_mpii(root / MAT, Skips()))
    names = []
    annolist = mat["RELEASE"]["annolist"][0, 0]
    for (i, rect), fault in zip(people, ["objpos", "scale", "head", "joint"], strict=False):
        names.append(str(annolist[0, i]["image"][0, 0]["name"][0]))
        if fault == "objpos":
            rect["objpos"][0, 0]["x"] = np.array([[np.nan]])
        elif fault == "scale":
            rect["scale"] = np.array([[0.0]])
        elif fault == "head":
            rect["x2"] = rect["x1"].astype(np.float64)
        else:
            rect["annopoints"][0, 0]["point"][0, 0]["y"] = np.array([[np.inf]])
    scipy.io.savemat(root / MAT, {"RELEASE": mat["RELEASE"]})
    skips = Skips()
    assert len(read_mpii(root / MAT, skips)) == before - 4
    assert skips.counts["degenerate_annotation"] == 4
    text = " ".join(skips.examples["degenerate_annotation"])
    for expected in ("objpos is [nan", "scale is 0.0", "head box", "joint's x or y"):
        assert expected in text, text
    assert all(name in text for name in names)
    with pytest.raises(StrictSkip, match="degenerate_annotation"):
        read_mpii(root / MAT, Skips(strict=True))


def test_a_malformed_eft_fit_is_skipped_naming_file_and_field(raw, packed, tmp_path):
    """The fit is counted and dropped; its person is still packed, without SMPL."""
    eft = tmp_path / "MPII_ver01.json"
    data = json.loads((raw / "mpii" / "MPII_ver01.json").read_text())
    data["data"][0]["parm_shape"] = data["data"][0]["parm_shape"][:9]
    data["data"][1]["parm_cam"][0] = float("nan")
    del data["data"][2]["bbox_center"]  # a missing field: no KeyError
    eft.write_text(json.dumps(data))
    results = [
        pack_mpii(raw / "mpii", split, tmp_path / split, "standin", OPTS, eft=eft)
        for split in ("train", "val")
    ]
    manifests = [json.loads(r["manifest"].read_text()) for r in results]
    assert sum(m["skipped"].get("malformed_eft_fit", 0) for m in manifests) == 3
    text = " ".join(" ".join(m["skipped_examples"].get("malformed_eft_fit", [])) for m in manifests)
    assert "MPII_ver01.json" in text
    assert "parm_shape has shape (9,)" in text and "parm_cam is not finite" in text
    assert "bbox_center is missing" in text
    clean = [json.loads((packed / s / MANIFEST).read_text()) for s in ("mpii", "mpii_val")]
    assert [m["num_samples"] for m in manifests] == [m["num_samples"] for m in clean]
    assert sum(m["eft"]["joined"] for m in manifests) == sum(m["eft"]["joined"] for m in clean) - 3


# ------------------------------------------------------------------ non-finite values downstream


def _rewrite_npz(shard, change):
    """Rewrite ``shard`` with ``change(arrays)`` applied to its first sample's npz."""
    import io
    import tarfile

    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    first = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".npz"))
    with np.load(io.BytesIO(members[first][1])) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members[first] = (members[first][0], buf.getvalue())
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return members[first][0].name.split(".")[0]


def test_packing_rejects_and_verify_names_a_non_finite_sample(packed, tmp_path, monkeypatch):
    # The builder's last check: any non-finite stored field is a counted skip.
    from pare.data.packing.samples import SampleError, encode_npz

    arrays = {"keypoints_2d": np.zeros((22, 3)), "pose": np.full(72, np.nan)}
    with pytest.raises(SampleError, match="nonfinite_values: seq/0/3: pose"):
        encode_npz(arrays, "seq/0/3")
    # MPII's "no camera" intrinsics are all NaN and pass; a NaN among numbers does not.
    from pare.data.fields import nonfinite_fields

    assert nonfinite_fields({"intrinsics": np.full((3, 3), np.nan)}) == []
    assert nonfinite_fields({"intrinsics": np.eye(3) * np.array([1, np.nan, 1])}) == ["intrinsics"]

    split = tmp_path / "3dpw"
    shutil.copytree(packed / "3dpw", split)
    shard = sorted(split.glob("*.tar"))[0]
    key = _rewrite_npz(shard, lambda a: a["betas"].__setitem__(0, np.nan))
    _, problems = verify_split(split)
    assert any(key in p and "npz betas not finite" in p for p in problems), problems


def test_evaluation_names_a_non_finite_sample(standin_bodies):
    from pare.evaluation import ConstantPrediction, NonFiniteSample, evaluate

    def batch(pose):
        n = len(pose)
        return {
            "image": torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
            "has_smpl": torch.ones(n, dtype=torch.bool),
            "pose": pose,
            "betas": torch.zeros(n, 10),
            "gender": torch.zeros(n, dtype=torch.int64),
            "__key__": [f"s{i}" for i in range(n)],
        }

    rest = torch.eye(3).expand(24, 3, 3)
    good = ConstantPrediction(rest, torch.zeros(10), standin_bodies)
    pose = torch.zeros(3, 72)
    ok = evaluate(good, [batch(pose)], standin_bodies, "cpu")
    assert np.isfinite(ok["mean"]["mpjpe"]) and ok["mean"]["mpjpe"] < 1e-3  # the same body
    pose[1, 4] = np.nan
    with pytest.raises(NonFiniteSample, match=r"sample s1 .*ground-truth pose or betas"):
        evaluate(good, [batch(pose)], standin_bodies, "cpu")
    diverged = ConstantPrediction(rest, torch.full((10,), np.nan), standin_bodies)
    with pytest.raises(NonFiniteSample, match=r"sample s0 .*prediction is not finite"):
        evaluate(diverged, [batch(torch.zeros(3, 72))], standin_bodies, "cpu")


# ------------------------------------------------------------------ repacking a folder


class _Killed(Exception):
    pass


def _kill_after(monkeypatch, builder_name, calls):
    """Make the packer's sample builder raise after ``calls`` samples (a kill, in-process)."""
    builder = getattr(pack_module, builder_name)
    original = builder.__call__
    count = {"n": 0}

    def call(self, rec):
        count["n"] += 1
        if count["n"] > calls:
            raise _Killed
        return original(self, rec)

    monkeypatch.setattr(builder, "__call__", call)


def test_a_killed_repack_leaves_no_manifest_and_a_rerun_is_byte_identical(
    raw, threedpw_copy, tmp_path, monkeypatch
):
    # Skips before and after the kill point: their examples must survive the resume.
    for image in sorted((threedpw_copy / "imageFiles").rglob("image_0000[15].jpg")):
        image.write_bytes(b"\xff\xd8\xff not a jpeg")
    straight = pack_3dpw(threedpw_copy, "train", tmp_path / "straight", "standin", OPTS)
    assert straight["skipped"].get("corrupt_image", 0) >= 2

    out = tmp_path / "repacked"
    pack_3dpw(
        threedpw_copy, "train", out, "standin", ShardOptions(maxcount=6, progress=False, seed=7)
    )
    with monkeypatch.context() as m:
        _kill_after(m, "ThreeDPWBuilder", 10)
        with pytest.raises(_Killed):
            pack_3dpw(threedpw_copy, "train", out, "standin", OPTS)  # a repack, seed 0
    assert not (out / MANIFEST).exists()  # the seed-7 manifest went when the repack started
    with pytest.raises(FileNotFoundError, match=r"packing did not finish.*rerun the same packer"):
        shard_urls(str(out))
    rerun = pack_3dpw(threedpw_copy, "train", out, "standin", OPTS)
    assert _digests(out) == _digests(tmp_path / "straight")
    assert _sha(rerun["manifest"]) == _sha(straight["manifest"])
    # Rerunning a finished pack changes no byte either (skip examples included).
    again = pack_3dpw(threedpw_copy, "train", out, "standin", OPTS)
    assert _sha(again["manifest"]) == _sha(straight["manifest"])
    assert "(in " not in again["manifest"].read_text()


def test_a_folder_whose_shards_disagree_with_its_manifest_is_refused(packed, tmp_path):
    split = tmp_path / "3dpw"
    shutil.copytree(packed / "3dpw", split)
    shards = sorted(split.glob("*.tar"))
    assert len(shards) >= 2
    assert len(shard_urls(str(split))) == len(shards)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:-1024])  # cut short, or another pack's shard
    with pytest.raises(ShardsDisagree, match=f"{shards[1].name} is .* bytes but .*lists"):
        shard_urls(str(split))
    shards[1].unlink()  # one of several missing: an error too, not a warning
    with pytest.raises(
        FileNotFoundError, match=f"1 of the {len(shards)} shards .*{shards[1].name}"
    ):
        shard_urls(str(split))


def test_leftover_temporary_files_are_removed(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftovers = []  # the names atomic_open writes under, as a SIGKILL mid-write leaves them
    for name in (MANIFEST, ".progress.json"):
        with pytest.raises(_Killed), atomic_open(out / name, "w") as f:
            f.write("{")
            leftovers += [p for p in out.iterdir() if p.name.endswith(".tmp")]
            raise _Killed
    for path in leftovers:
        path.write_text("{")  # atomic_open removed its own; put them back as a kill leaves them
    pack_3dpw(raw / "3dpw", "train", out, "standin", OPTS)
    assert not any(p.exists() for p in leftovers)


def test_a_merge_killed_while_removing_slices_finishes_on_rerun(raw, packed, tmp_path, monkeypatch):
    from pare.data.packing import shard_writer

    out = tmp_path / "sliced"
    for index in range(3):
        options = ShardOptions(maxcount=6, progress=False, slice_index=index, num_slices=3)
        pack_3dpw(raw / "3dpw", "train", out, "standin", options)
    merge = ShardOptions(maxcount=6, progress=False, num_slices=3, merge=True)
    original = shard_writer._remove_slices

    def killed(out_, prefix, count):  # slice 0 removed, then the job dies
        for path in shard_writer._slice_paths(out_, prefix, 0, count):
            path.unlink()
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(shard_writer, "_remove_slices", killed)
        with pytest.raises(_Killed):
            pack_3dpw(raw / "3dpw", "train", out, "standin", merge)
    assert shard_writer._remove_slices is original
    result = pack_3dpw(raw / "3dpw", "train", out, "standin", merge)  # used to say: rebuild slice 0
    assert _digests(out) == _digests(packed / "3dpw")
    assert json.loads(result["manifest"].read_text()) == json.loads(
        (packed / "3dpw" / MANIFEST).read_text()
    )
    assert not (out / ".slices").exists()


def test_two_packers_in_one_folder_the_second_stops(raw, tmp_path):
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / LOCK, timeout=0):  # another packer at work
        with pytest.raises(PackError, match=f"another packer is writing {out}"):
            pack_3dpw(raw / "3dpw", "train", out, "standin", OPTS)
    assert not list(out.glob("*.tar"))
    pack_3dpw(raw / "3dpw", "train", out, "standin", OPTS)  # free again


def test_a_split_with_no_usable_sample_is_an_error_without_manifest(raw, tmp_path):
    with pytest.raises(PackError, match=r"no sample of mpii train .*too_few_joints"):
        pack_mpii(raw / "mpii", "train", tmp_path / "empty", "standin", OPTS, min_joints=99)
    assert not (tmp_path / "empty" / MANIFEST).exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("m", "male"), ("f", "female"), (b"m", "male"), (b"f", "female"),
        ("M", "male"), (" F ", "female"), ("male", "male"), ("Female", "female"),
        (np.str_("f"), "female"), (np.bytes_(b"m"), "male"), (np.array("f"), "female"),
        (np.array([b"m"]), "male"),
    ],
)  # fmt: skip
def test_every_unambiguous_gender_spelling_is_read(value, expected):
    from pare.data.packing.readers import read_gender

    assert read_gender(value) == expected


@pytest.mark.parametrize(
    "value", ["n", "neutral", "", "x", 0, 1, 1.0, None, True, np.array(["m", "f"])]
)
def test_a_gender_that_is_not_understood_is_refused_never_neutral(value):
    from pare.data.packing.readers import read_gender

    with pytest.raises(ValueError, match=r"genders is .*expected 'm' or 'f'"):
        read_gender(value)
