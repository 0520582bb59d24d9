"""predict.py's library (people files, boxes, crops and their intrinsics, inputs, overlays) and
its command line on a tiny model: unreadable inputs are skipped, named and counted."""

import io
import json
import runpy
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pare.checkpoint import export_weights
from pare.config import load_config, save_config
from pare.data.synthetic.scene import box_mesh
from pare.models import build_model
from pare.predict import (
    Frame,
    Unreadable,
    crop_intrinsics,
    crop_person,
    full_intrinsics,
    iter_frames,
    overlay_background,
    overlay_people,
    person_boxes,
    prepare_frame,
    read_people_file,
)
from pare.render import Camera, Mesh, render

PREDICT = Path(__file__).parents[1] / "train" / "predict.py"


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


def _jpeg(seed: int, shape=(48, 64)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# What a damaged image looks like on disk, and the reason its skip line gives.
BROKEN = {
    "empty.jpg": (b"", "an empty file"),
    "text.jpg": (b"not a jpeg", "not in a format Pillow reads"),
    "cut.jpg": (_jpeg(0)[: len(_jpeg(0)) // 2], "truncated"),  # an interrupted download
    "cut.png": (_png()[:60], "truncated"),
}


def test_inputs_are_checked(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("hello")
    assert [f.name for f in iter_frames([tmp_path / "a.png"])] == ["a"]
    with pytest.raises(ValueError, match="not an image"):
        list(iter_frames([tmp_path / "notes.txt"]))
    with pytest.raises(FileNotFoundError, match="input not found"):
        list(iter_frames([tmp_path / "missing.png"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list(iter_frames([empty]))


def test_unreadable_images_come_in_their_place_with_a_reason(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(1))
    for name, (data, _) in BROKEN.items():
        (folder / name).write_bytes(data)
    (folder / "z.jpg").write_bytes(_jpeg(2))
    items = list(iter_frames([folder]))
    assert [type(i).__name__ for i in items] == ["Frame", *["Unreadable"] * 4, "Frame"]
    assert [i.name for i in items if isinstance(i, Frame)] == ["a", "z"]
    skipped = {i.path.name: i.reason for i in items if isinstance(i, Unreadable)}
    assert set(skipped) == set(BROKEN)
    for name, (_, why) in BROKEN.items():
        reason = skipped[name]
        assert str(folder / name) in reason and why.lower() in reason.lower(), reason
        assert "\n" not in reason and reason.endswith("re-export it as JPEG or PNG")
    # a named file too: the caller decides (predict.py stops when nothing could be read)
    (item,) = iter_frames([folder / "text.jpg"])
    assert isinstance(item, Unreadable) and item.path == folder / "text.jpg"


@pytest.mark.parametrize(
    ("orientation", "marker_at"),
    [
        (1, (0, 0)),  # as stored
        (3, (-1, -1)),  # rotate 180: top-left shows bottom-right
        (6, (0, -1)),  # rotate 90 clockwise to view (EXIF 6): row 0 is the right side
        (8, (-1, 0)),  # rotate 90 counter-clockwise (EXIF 8): row 0 is the left side
    ],
)
def test_a_phone_photo_is_read_as_a_viewer_shows_it(tmp_path, orientation, marker_at):
    """EXIF orientation (TIFF/EXIF tag 0x0112): the stored top-left corner, marked red, lands
    where the standard's definition puts it, and the sides swap for 6 and 8."""
    from pare.predict import read_image

    stored = np.full((40, 60, 3), 200, np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    shown = read_image(path)
    assert shown.shape == ((60, 40, 3) if orientation in (6, 8) else (40, 60, 3))
    rows = slice(0, 8) if marker_at[0] == 0 else slice(-8, None)
    cols = slice(0, 8) if marker_at[1] == 0 else slice(-8, None)
    corner = shown[rows, cols].reshape(-1, 3).mean(0)
    assert corner[0] > 200 and corner[1] < 60, (orientation, corner)


def test_16_bit_grey_is_rescaled_not_clipped_and_32_bit_is_refused(tmp_path):
    from pare.predict import read_image

    ramp = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(3, 0)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    got = read_image(tmp_path / "grey16.png")
    assert got.dtype == np.uint8 and got.shape == (3, 4, 3)
    np.testing.assert_array_equal(got[0, :, 0], [0, 1, 128, 255])  # v * 255 / 65535, rounded
    assert (got[..., 0] == got[..., 2]).all()
    Image.fromarray(np.array([[0.5, 2.0]], np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif holds floating-point pixels.*8-bit"):
        read_image(tmp_path / "float.tif")


def test_a_video_that_fails_keeps_its_frames_before(tmp_path, monkeypatch):
    iio = pytest.importorskip("imageio.v3")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    (item,) = iter_frames([clip])  # ffmpeg cannot open it
    assert isinstance(item, Unreadable)
    assert item.reason.startswith(f"{clip} is not a readable video (") and "\n" not in item.reason

    def dies_after_three(path, **kwargs):
        for i in range(3):
            yield np.full((4, 6, 3), i, np.uint8)
        raise OSError("Could not read frame 3:\n=== stderr ===\nffmpeg's whole log")

    monkeypatch.setattr(iio, "imiter", dies_after_three)
    items = list(iter_frames([clip], video_step=2))
    assert [f.name for f in items[:-1]] == ["clip_f000000", "clip_f000002"]
    assert items[1].image[0, 0, 0] == 2
    assert isinstance(items[-1], Unreadable)
    assert items[-1].reason.startswith(f"{clip} stopped decoding after frame 2 (Could not read")
    assert "\n" not in items[-1].reason


def _video(path: Path, frames: np.ndarray, *display: str) -> Path:
    """(T, H, W, 3) uint8 frames as a lossless video (PNG in QuickTime) with the bundled ffmpeg,
    its display matrix set by ``display`` (ffmpeg's -display_rotation / -display_hflip input
    options; -noautorotate keeps the encoder from applying them to the pixels)."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    h, w = frames.shape[1:3]
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "5", "-i", "-"]
    command = [ffmpeg, "-loglevel", "error", "-y", *display, "-noautorotate", *raw]
    subprocess.run([*command, "-c:v", "png", str(path)], input=frames.tobytes(), check=True)
    return path


def _clip(t: int = 4, h: int = 32, w: int = 48) -> np.ndarray:
    """(T, H, W, 3) frames no rotation or flip maps onto another: a red block in the top-left
    corner, a green stripe on the right, a white bar below centre-left, and blue counting
    frames."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 2] = (40 * np.arange(t, dtype=np.uint8))[:, None, None]
    frames[:, :8, :16, 0] = 255
    frames[:, :, -4:, 1] = 255
    frames[:, 20:24, 4:12] = 255
    return frames


@pytest.mark.parametrize(
    ("display", "shown"),
    [
        ((), lambda f: f),  # no display matrix
        (("-display_rotation", "0"), lambda f: f),
        # ffmpeg's angles are counter-clockwise, as np.rot90's; a phone held upright writes -90
        (("-display_rotation", "90"), lambda f: np.rot90(f, 1)),
        (("-display_rotation", "180"), lambda f: np.rot90(f, 2)),
        (("-display_rotation", "270"), lambda f: np.rot90(f, 3)),
        (("-display_rotation", "-90"), lambda f: np.rot90(f, -1)),
        (("-display_hflip",), np.fliplr),  # a mirrored selfie
    ],
    ids=["none", "0", "90", "180", "270", "-90", "hflip"],
)
def test_a_rotated_video_is_read_as_a_player_shows_it(tmp_path, display, shown, caplog):
    """Turned once, by ffmpeg: the frames equal numpy's turn of the stored ones, so the image
    size saved with a prediction and the boxes given per frame are the upright picture's."""
    pytest.importorskip("imageio.v3")
    stored = _clip()
    video = _video(tmp_path / "clip.mov", stored, *display)
    frames = list(iter_frames([video], video_step=2))
    assert [f.name for f in frames] == ["clip_f000000", "clip_f000002"]
    for frame, original in zip(frames, stored[::2], strict=True):
        upright = shown(original)
        np.testing.assert_array_equal(frame.image, upright)
        assert frame.image.flags.c_contiguous
        # A box around the red block where the upright picture shows it crops the block.
        rows, cols = np.nonzero((upright[..., 0] == 255) & (upright[..., 1] == 0))
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], float)
        prepared = prepare_frame(frame, person_boxes(frame, [box]), 16, None)
        assert prepared.image_size == upright.shape[:2]
        assert tuple(prepared.crops[0][8, 8]) == (255, 0, upright[0, 0, 2])
    # imageio-ffmpeg's warning that the size differs from the stored one is dropped
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]


def test_a_video_turned_by_an_odd_angle_is_refused_with_its_reason(tmp_path):
    pytest.importorskip("imageio.v3")
    video = _video(tmp_path / "tilted.mov", _clip(t=2), "-display_rotation", "45")
    (item,) = iter_frames([video])
    assert isinstance(item, Unreadable)
    assert item.reason == (
        f"{video} is not a readable video (its display rotation is not a multiple of 90 "
        "degrees); re-encode or re-download it"
    )


def test_overlay_of_a_huge_image_is_bounded_and_the_mesh_lands_where_it_projects():
    h, w = 2500, 4000
    ys, xs = np.mgrid[0:h, 0:w]
    # A ramp whose red channel is x and green channel y (in 0..255): where a pixel came from.
    image = np.stack([xs * 255 // (w - 1), ys * 255 // (h - 1), np.full_like(xs, 40)], -1)
    image = image.astype(np.uint8)
    k_full = full_intrinsics(h, w, focal=3000.0)
    box = box_mesh(np.array([0.4, -0.2, 6.0]), np.array([0.5, 0.8, 0.3]), np.ones(3))
    person = {"vertices": box.vertices, "intrinsics": k_full}

    tracemalloc.start()
    background = overlay_background(image, 400)
    picture = overlay_people(background, [person], box.faces, (h, w))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # No full-size copy anywhere on the numpy side (30 MB as uint8, 240 MB as float64): the
    # render at 400 x 250 takes ~9 MB, at the full 4000 x 2500 it took ~0.9 GB.
    assert peak < image.nbytes / 2, peak
    assert picture.shape == (250, 400, 3) and picture.dtype == np.uint8

    # The mesh covers the box of its full-image projection, scaled by 400 / 4000.
    uvw = box.vertices @ k_full.T
    x0, y0 = (uvw[:, :2] / uvw[:, 2:]).min(0) / 10
    x1, y1 = (uvw[:, :2] / uvw[:, 2:]).max(0) / 10
    mesh = picture[..., 2] != 40  # the blend changes the constant blue channel
    rows, cols = np.nonzero(mesh)
    assert abs(cols.min() - x0) <= 1 and abs(cols.max() + 1 - x1) <= 1, (cols, x0, x1)
    assert abs(rows.min() - y0) <= 1 and abs(rows.max() + 1 - y1) <= 1, (rows, y0, y1)
    # Against a render of its own through the full camera scaled by 1/10: 0.3 image + 0.7 mesh.
    camera = Camera(np.diag([0.1, 0.1, 1.0]) @ k_full, np.eye(3), np.zeros(3), 400, 250)
    reference = render([Mesh(box.vertices, box.faces)], camera)
    np.testing.assert_array_equal(mesh, reference.mask)
    blend = 0.3 * background[mesh] + 0.7 * reference.image[mesh]
    np.testing.assert_allclose(picture[mesh], blend, atol=1)
    # Elsewhere the background is the image scaled: pixel (i, j) shows the ramp at its centre.
    centre_x = (np.arange(400) + 0.5) * 10
    centre_y = (np.arange(250) + 0.5) * 10
    np.testing.assert_allclose(picture[0, :, 0], centre_x * 255 / (w - 1), atol=2)
    np.testing.assert_allclose(picture[:, 0, 1], centre_y * 255 / (h - 1), atol=2)
    assert not mesh[0].any() and not mesh[:, 0].any()

    # The crops still come from the full image; a small image is drawn as it is.
    frame = Frame("huge", image)
    centre, side = np.array([1000.0, 700.0]), 64.0
    prepared = prepare_frame(frame, [(centre, side)], 64, 400)
    np.testing.assert_array_equal(prepared.crops[0], crop_person(image, centre, side, 64))
    assert prepared.image_size == (h, w) and prepared.background.shape == (250, 400, 3)
    small = np.zeros((300, 200, 3), np.uint8)
    assert overlay_background(small, 400) is small
    assert prepare_frame(Frame("s", small), [], 64, None).background is None


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder holding an untrained small model (64 px crops): enough to run predict.py."""
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(
        [],
        [
            "model.backbone=hrnet_w18_small",
            "model.branch_channels=16",
            "model.branch_layers=1",
            "data.crop_size=64",
        ],
    )
    torch.manual_seed(0)
    save_config(cfg, run / "config.yaml")
    export_weights(build_model(cfg.model, cfg.body), run / "model.safetensors")
    return run


def _predict(monkeypatch, *args) -> int:
    """train/predict.py as its ``__main__`` runs it, in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(PREDICT), run_name="__main__")
    return exit_.value.code


def test_predict_skips_unreadable_images_and_stops_when_none_is_readable(
    tiny_run, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(1))
    (folder / "b.jpg").write_bytes(_jpeg(2, (40, 90)))
    (folder / "broken.jpg").write_bytes(BROKEN["cut.jpg"][0])
    out = tmp_path / "out"
    args = ("--checkpoint", tiny_run, "--out", out, "--overlay-max-side", "45")
    assert _predict(monkeypatch, folder, *args) == 0
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        "a_overlay.png", "a_p0.json", "a_p0.npz",
        "b_overlay.png", "b_p0.json", "b_p0.npz",
    ]  # fmt: skip
    (skip_line,) = [line for line in printed.err.splitlines() if line.startswith("skipped: ")]
    assert f"{folder / 'broken.jpg'} is not a readable image (" in skip_line
    assert "2 images" in printed.out and "unreadable inputs skipped: 1 (" in printed.out
    # Overlays at most 45 px wide or high, aspect kept (64 x 48 and 90 x 40 images).
    assert Image.open(out / "a_overlay.png").size == (45, 34)
    assert Image.open(out / "b_overlay.png").size == (45, 20)

    # Nothing readable: one line, exit 2. A folder of broken images, then one named file.
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (data, _) in BROKEN.items():
        (bad / name).write_bytes(data)
    assert _predict(monkeypatch, bad, "--checkpoint", tiny_run, "--out", tmp_path / "o2") == 2
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: none of the {len(BROKEN)} images or videos could be read")
    assert sum(line.startswith("skipped: ") for line in err.splitlines()) == len(BROKEN)
    named = bad / "text.jpg"
    assert _predict(monkeypatch, named, "--checkpoint", tiny_run, "--out", tmp_path / "o3") == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert error == (
        f"error: {named} is not a readable image (not in a format Pillow reads); "
        "re-export it as JPEG or PNG"
    )
