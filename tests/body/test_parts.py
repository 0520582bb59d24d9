"""Part labels: the two public sources -> smpl_part_labels.npy, and the loader's order check."""

import json

import numpy as np
import pytest

from pare.body import PartLabelError, load_eval_assets, read_smpl_file
from pare.body.joints import SMPL_24, SMPL_FLIP
from pare.body.parts import (
    SEGMENTATION_NAMES,
    SMPL_TO_SEGMENTATION_NAME,
    flip_from_segmentation_names,
    labels_from_pare_mapping,
    labels_from_vert_segmentation,
    main,
    swap_side,
)
from pare.data.streaming.augment import PART_LABEL_FLIP
from pare.data.synthetic.py2pickle import dumps_py2
from pare.io_utils import leftover_temporaries

# The keys of Meshcapade's smpl_vert_segmentation.json in the file's own order (as mmhuman3d's
# copy, mmhuman3d/core/conventions/segmentation/smpl.py, lists them): not SMPL joint order.
JSON_KEY_ORDER = (
    "rightHand", "rightUpLeg", "leftArm", "leftLeg", "leftToeBase", "leftFoot", "spine1",
    "spine2", "leftShoulder", "rightShoulder", "rightFoot", "head", "rightArm", "leftHandIndex1",
    "rightLeg", "rightHandIndex1", "leftForeArm", "rightForeArm", "neck", "rightToeBase", "spine",
    "leftUpLeg", "leftHand", "hips",
)  # fmt: skip
# SMPL's left/right swap written out by hand, independently of any name table.
SMPL_FLIP_BY_HAND = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]  # fmt: skip


@pytest.fixture(scope="module")
def standin(standin_folder):
    """The stand-in's labels (V,) and faces (F, 3)."""
    labels = np.load(standin_folder / "smpl_part_labels.npy")
    faces = read_smpl_file(standin_folder / "SMPL_NEUTRAL.pkl")["f"].astype(np.int64)
    return labels, faces


def _segmentation(labels, faces, names=SEGMENTATION_NAMES):
    """A smpl_vert_segmentation.json-style dict from labels, in the real file's key order, that
    (like the real file) also lists each boundary vertex under its lower-numbered neighbour."""
    parts = {names[k]: set(np.flatnonzero(labels == k).tolist()) for k in range(len(names))}
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    la, lb = labels[edges[:, 0]], labels[edges[:, 1]]
    for a, b in edges[la > lb]:
        parts[names[labels[b]]].add(int(a))
    return {name: sorted(parts[name]) for name in JSON_KEY_ORDER}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, standin):
    """Fake public sources built from the stand-in's labels: the JSON and PARE's pkl."""
    labels, faces = standin
    folder = tmp_path_factory.mktemp("sources")
    seg = _segmentation(labels, faces)
    (folder / "smpl_vert_segmentation.json").write_text(json.dumps(seg))
    # As PARE ships it: a Python 2 pickle of {'smpl_index': (6890,) SMPL joint ids}.
    pkl = dumps_py2({"smpl_index": labels.astype(np.int64)})
    (folder / "smpl_partSegmentation_mapping.pkl").write_bytes(pkl)
    return folder


def _model_copy(standin_folder, target):
    """A body-model folder whose SMPL files link to the stand-in's, without part labels."""
    target.mkdir()
    for file in standin_folder.glob("SMPL_*.pkl"):
        (target / file.name).symlink_to(file)
    for name in ("J_regressor_h36m.npy", "J_regressor_extra.npy"):
        (target / name).symlink_to(standin_folder / name)
    return target


def test_flip_from_part_names_equals_the_flip_tables_in_use():
    derived = flip_from_segmentation_names()
    np.testing.assert_array_equal(derived, SMPL_FLIP_BY_HAND)
    np.testing.assert_array_equal(derived, SMPL_FLIP)
    # The one the augmentation applies to part maps (0 = background, l = SMPL part l - 1).
    assert PART_LABEL_FLIP[0] == 0
    np.testing.assert_array_equal(PART_LABEL_FLIP[1:].astype(np.int64) - 1, derived)
    assert swap_side("leftHandIndex1") == "rightHandIndex1" and swap_side("spine1") == "spine1"


def test_name_table_covers_the_json_and_smpl_one_to_one():
    assert tuple(SMPL_TO_SEGMENTATION_NAME) == SMPL_24
    assert sorted(SEGMENTATION_NAMES) == sorted(JSON_KEY_ORDER)
    # The trap the table exists for: the file's spine names are one off SMPL's.
    assert SEGMENTATION_NAMES[SMPL_24.index("spine2")] == "spine1"
    assert SEGMENTATION_NAMES[SMPL_24.index("left_foot")] == "leftToeBase"


def test_both_sources_give_the_same_labels(sources, standin):
    labels, _ = standin
    from_json, shared = labels_from_vert_segmentation(sources / "smpl_vert_segmentation.json")
    from_pkl = labels_from_pare_mapping(sources / "smpl_partSegmentation_mapping.pkl")
    np.testing.assert_array_equal(from_json, labels)
    np.testing.assert_array_equal(from_pkl, labels)
    assert from_json.dtype == from_pkl.dtype == np.int64
    assert shared > 100  # the overlap rule was exercised


@pytest.mark.parametrize(
    "source", ["smpl_vert_segmentation.json", "smpl_partSegmentation_mapping.pkl"]
)
def test_command_writes_labels_the_loader_accepts(
    sources, standin, standin_folder, tmp_path, source, capsys
):
    model = _model_copy(standin_folder, tmp_path / "smpl")
    assert main([str(sources / source), "--out", str(model), "--body-model", "standin"]) == 0
    written = model / "smpl_part_labels.npy"
    assert "checked against standin" in capsys.readouterr().out
    assert leftover_temporaries(written) == []
    np.testing.assert_array_equal(load_eval_assets(model).part_labels, standin[0])


def test_labels_in_json_key_order_are_refused_by_name(standin, standin_folder, tmp_path):
    labels, _ = standin
    model = _model_copy(standin_folder, tmp_path / "smpl")
    position = np.array([JSON_KEY_ORDER.index(n) for n in SEGMENTATION_NAMES])
    np.save(
        model / "smpl_part_labels.npy", position[labels]
    )  # part k numbered as the JSON's kth key
    with pytest.raises(PartLabelError) as err:
        load_eval_assets(model)
    message = str(err.value)
    assert "\n" not in message
    assert str(model / "smpl_part_labels.npy") in message
    # Part 0 of such a file is the JSON's first key, rightHand: SMPL's right wrist.
    assert (
        "part 0 should be SMPL joint 'pelvis' but its vertices lie around 'right_wrist'" in message
    )
    assert "pare-convert-parts" in message


def test_left_right_swapped_labels_are_refused(standin, standin_folder, tmp_path):
    model = _model_copy(standin_folder, tmp_path / "smpl")
    np.save(model / "smpl_part_labels.npy", SMPL_FLIP[standin[0]])
    with pytest.raises(PartLabelError, match="left and right swapped"):
        load_eval_assets(model)


def test_parts_that_do_not_mirror_are_refused(standin, standin_folder, tmp_path):
    # Half the left forearm labelled left wrist: still in joint order, but no longer the mirror
    # image of the right side, so a flipped part map would be wrong.
    labels = standin[0].copy()
    v = read_smpl_file(standin_folder / "SMPL_NEUTRAL.pkl")["v_template"]
    forearm = np.flatnonzero(labels == SMPL_24.index("left_elbow"))
    labels[forearm[v[forearm, 0] > np.median(v[forearm, 0])]] = SMPL_24.index("left_wrist")
    model = _model_copy(standin_folder, tmp_path / "smpl")
    np.save(model / "smpl_part_labels.npy", labels)
    with pytest.raises(PartLabelError, match="'left_wrist' and 'right_wrist' do not mirror"):
        load_eval_assets(model)


def test_body_model_check_runs_before_writing(standin, tmp_path, capsys):
    # A source whose own names are mirrored converts cleanly but fails the check: nothing written.
    labels, faces = standin
    mirrored = tuple(swap_side(n) for n in SEGMENTATION_NAMES)
    src = tmp_path / "smpl_vert_segmentation.json"
    src.write_text(json.dumps(_segmentation(labels, faces, names=mirrored)))
    out = tmp_path / "out" / "smpl_part_labels.npy"
    out.parent.mkdir()
    assert main([str(src), "--out", str(out), "--body-model", "standin"]) == 1
    assert "left and right swapped" in capsys.readouterr().err
    assert not out.exists() and leftover_temporaries(out) == []


def _bad_sources(folder, sources):
    pkl = (sources / "smpl_partSegmentation_mapping.pkl").read_bytes()
    seg = json.loads((sources / "smpl_vert_segmentation.json").read_text())
    no_hips = {k: v for k, v in seg.items() if k != "hips"}
    uncovered = {k: [i for i in v if i != 0] for k, v in seg.items()}
    files = {
        "truncated.pkl": pkl[: len(pkl) // 2],
        "malformed.json": b'{"hips": [0, 1,',
        "no_hips.json": json.dumps(no_hips).encode(),
        "uncovered.json": json.dumps(uncovered).encode(),
        "list.json": b"[1, 2, 3]",
        "no_key.pkl": dumps_py2({"parts": np.zeros(6890)}),
        "one_based.pkl": dumps_py2({"smpl_index": np.arange(6890) % 24 + 1}),
        "short.pkl": dumps_py2({"smpl_index": np.zeros(100, np.int64)}),
        "crafted.pkl": b"cos\nsystem\n(S'echo owned'\ntR.",
        "labels.txt": b"0 1 2",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [*files, "missing.json"]


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory, sources):
    folder = tmp_path_factory.mktemp("bad")
    return folder, _bad_sources(folder, sources)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("truncated.pkl", "not a readable pickle"),
        ("malformed.json", "not valid JSON"),
        ("no_hips.json", "missing parts ['hips']"),
        ("uncovered.json", "1 of 6890 vertices belong to no part"),
        ("list.json", "expected a JSON object"),
        ("no_key.pkl", "expected PARE's dict with 'smpl_index'"),
        ("one_based.pkl", "(1-based?)"),
        ("short.pkl", "has shape (100,)"),
        ("crafted.pkl", "refusing to load global 'os.system'"),
        ("labels.txt", "unknown source type"),
        ("missing.json", "no such file"),
    ],
)
def test_bad_source_gives_one_line_error_and_writes_nothing(bad_sources, name, says, capsys):
    folder, _ = bad_sources
    out = folder / f"{name}.npy"
    assert main([str(folder / name), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(folder / name) in err and says in err
    assert not out.exists() and leftover_temporaries(out) == []


def test_body_check_names_mis_ordered_labels(standin, standin_folder, tmp_path, capsys):
    from pare.body.check import main as check_main

    model = _model_copy(standin_folder, tmp_path / "smpl")
    np.save(model / "smpl_part_labels.npy", SMPL_FLIP[standin[0]])
    code = check_main(["--model-path", str(model), "--batch-size", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "left and right swapped" in err[-1]
