"""predict.py's library: people files, boxes, crops and their intrinsics, inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from pare.predict import (
    Frame,
    crop_intrinsics,
    crop_person,
    full_intrinsics,
    iter_frames,
    person_boxes,
    read_people_file,
)


def test_people_files_give_boxes_and_keypoints(tmp_path):
    path = tmp_path / "people.json"
    flat = [10, 20, 1, 30, 60, 1, 0, 0, 0]  # OpenPose's flat x, y, c list
    path.write_text(
        json.dumps({"a.jpg": [[0, 0, 10, 20]], "b.png": [flat, [[1, 2, 1], [3, 4, 0]]]})
    )
    people = read_people_file(path)
    assert set(people) == {"a", "b"}
    np.testing.assert_array_equal(people["a"][0], [0, 0, 10, 20])
    assert people["b"][0].shape == (3, 3) and people["b"][1].shape == (2, 3)
    path.write_text(json.dumps({"a.jpg": [[1, 2]]}))
    with pytest.raises(ValueError, match=r"a.jpg has a person of shape \(2,\)"):
        read_people_file(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_people_file(path)
    folder = tmp_path / "openpose"
    folder.mkdir()
    (folder / "img_keypoints.json").write_text(
        json.dumps({"people": [{"pose_keypoints_2d": flat}]})
    )
    assert read_people_file(folder)["img"][0].shape == (3, 3)
    with pytest.raises(FileNotFoundError, match="people file not found"):
        read_people_file(tmp_path / "missing.json")


def test_person_boxes_follow_spins_convention():
    frame = Frame("x", np.zeros((100, 60, 3), np.uint8))
    ((centre, side),) = person_boxes(frame, None)  # centred square
    np.testing.assert_allclose(centre, [30, 50])
    assert side == 60
    boxes = person_boxes(
        frame, [np.array([10, 10, 30, 50.0]), np.array([[5, 5, 1], [15, 25, 1], [0, 0, 0]])]
    )
    np.testing.assert_allclose(boxes[0][0], [20, 30])
    assert boxes[0][1] == pytest.approx(1.2 * 40)
    np.testing.assert_allclose(boxes[1][0], [10, 15])
    assert boxes[1][1] == pytest.approx(1.2 * 20)
    assert person_boxes(frame, [np.array([[5, 5, 1], [0, 0, 0]])]) == []  # one keypoint: no box
    assert person_boxes(frame, []) == []  # listed in a people file with nobody: no made-up crop


def test_crop_intrinsics_map_image_points_to_their_crop_pixels():
    image = np.zeros((120, 90, 3), np.uint8)
    image[40, 70] = 255  # one bright pixel at x=70, y=40 (its centre at 70.5, 40.5)
    centre, side, size = np.array([60.0, 50.0]), 40.0, 80
    crop = crop_person(image, centre, side, size)
    k_full = full_intrinsics(120, 90, focal=500.0)
    k_crop = crop_intrinsics(k_full, centre, side, size)
    # A camera-frame point that projects to the bright pixel's centre in the image...
    ray = np.linalg.solve(k_full, [70.5, 40.5, 1.0])
    uvw = k_crop @ ray
    u, v = uvw[:2] / uvw[2]
    # ...projects with the crop intrinsics onto the brightest crop pixel (2 px per image px).
    y, x = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    assert abs((x + 0.5) - u) <= 1.0 and abs((y + 0.5) - v) <= 1.0


def test_inputs_are_checked(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert [f.name for f in iter_frames([tmp_path / "a.png"])] == ["a"]
    with pytest.raises(ValueError, match="not an image"):
        list(iter_frames([tmp_path / "notes.txt"]))
    with pytest.raises(ValueError, match=r"bad\.jpg is not a readable image"):
        list(iter_frames([tmp_path / "bad.jpg"]))
    with pytest.raises(FileNotFoundError, match="input not found"):
        list(iter_frames([tmp_path / "missing.png"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list(iter_frames([empty]))
