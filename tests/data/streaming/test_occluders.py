"""PARE's synthetic occlusion and motion blur: the VOC cut-outs, their draw, where they land,
what they leave alone, and the config checks."""

import importlib.util
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pare.config import AugmentConfig, ConfigError, load_config, occluder_files
from pare.data.streaming.augment import (
    AugmentParams,
    PastedObject,
    augment,
    draw_params,
    motion_blur,
    motion_blur_kernel,
    paste_objects,
)

ROOT = Path(__file__).parents[3]
SPEC = importlib.util.spec_from_file_location(
    "make_occluders", ROOT / "shards" / "make_occluders.py"
)
make_occluders = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(make_occluders)

S = 224
MAGENTA, CYAN, YELLOW = (255, 0, 255), (0, 255, 255), (255, 255, 0)


# -- a folder of three cut-outs and a decoded sample ---------------------------------------------


@pytest.fixture
def cutouts(tmp_path):
    """Two opaque rectangles and a half-transparent one: after any resize each stays a
    rectangle of round(side * factor) of one colour and one alpha."""
    folder = tmp_path / "occluders"
    folder.mkdir()
    for name, (w, h), colour, alpha in (
        ("a_magenta.png", (60, 40), MAGENTA, 255),
        ("b_cyan.png", (30, 50), CYAN, 255),
        ("c_yellow.png", (40, 40), YELLOW, 128),
    ):
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3], rgba[..., 3] = colour, alpha
        Image.fromarray(rgba, "RGBA").save(folder / name)
    (folder / "README.txt").write_text("not a cut-out")
    return folder


def _sample(seed=0, stored=320):
    """A decoded shard sample: a smooth image, a part map of blocks, keypoints inside the box."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((stored, stored), Image.Resampling.BILINEAR))
    parts = np.kron(rng.integers(0, 25, (10, 10)), np.ones((16, 16), int)).astype(np.uint8)
    kp = np.concatenate(
        [rng.uniform(stored / 4, 3 * stored / 4, (49, 2)), np.ones((49, 1))], 1
    ).astype(np.float32)
    kp[3, 2] = 0
    return {
        "__key__": "x",
        "image": image,
        "parts": parts,
        "keypoints_2d": kp,
        "pose": rng.normal(0, 0.3, 72).astype(np.float32),
        "betas": np.zeros(10, np.float32),
        "joints_3d": rng.normal(0, 0.5, (24, 3)).astype(np.float32) + [0, 0, 5],
        "h36m_3d": rng.normal(0, 0.5, (17, 3)).astype(np.float32) + [0, 0, 5],
        "intrinsics": np.array([[1000, 0, 160], [0, 1000, 160], [0, 0, 1]], np.float32),
        "head_size": 30.0,
    }


def _rectangle(obj: PastedObject, w: int, h: int) -> tuple[slice, slice]:
    """Where PARE's paste_over puts a w x h cut-out: round(side * scale * S / 256), its centre
    rounded, the top-left corner at centre - side // 2, clipped to the crop."""
    f = obj.scale * S / 256
    rw, rh = round(w * f), round(h * f)
    x0, y0 = round(obj.center[0] * S) - rw // 2, round(obj.center[1] * S) - rh // 2
    return slice(max(y0, 0), min(y0 + rh, S)), slice(max(x0, 0), min(x0 + rw, S))


# -- where objects land ----------------------------------------------------------------------------


def test_pasted_objects_change_exactly_the_pixels_their_alpha_covers(cutouts):
    """Brute-force reference: each cut-out is a one-colour rectangle, so the expected image is
    the plain crop with each rectangle alpha-blended over it in order."""
    objects = (
        PastedObject(str(cutouts / "a_magenta.png"), 0.9, (0.3, 0.4)),
        PastedObject(str(cutouts / "b_cyan.png"), 0.5, (0.97, 0.02)),  # partly outside
        PastedObject(str(cutouts / "c_yellow.png"), 0.7, (0.35, 0.45)),  # over the magenta
    )
    geometry = AugmentParams(scale=1.1, rotation_deg=12.0, flip=True)
    plain = augment(_sample(), geometry)["image"]
    out = augment(_sample(), replace(geometry, objects=objects))["image"]

    expected = plain.astype(np.float64)
    cover = np.zeros((S, S), bool)
    for obj, (w, h), colour, alpha in zip(
        objects,
        ((60, 40), (30, 50), (40, 40)),
        (MAGENTA, CYAN, YELLOW),
        (255, 255, 128),
        strict=True,
    ):
        rows, cols = _rectangle(obj, w, h)
        a = alpha / 255
        expected[rows, cols] = a * np.asarray(colour) + (1 - a) * expected[rows, cols]
        cover[rows, cols] = True
    magenta_rows, magenta_cols = _rectangle(objects[0], 60, 40)
    assert (magenta_rows.stop - magenta_rows.start, magenta_cols.stop - magenta_cols.start) == (
        round(40 * 0.9 * S / 256),
        round(60 * 0.9 * S / 256),
    )
    np.testing.assert_array_equal(out[~cover], plain[~cover])  # nothing outside the alpha
    assert np.abs(out.astype(float) - expected).max() <= 0.5 + 1e-9  # blended in uint8
    changed = np.any(out != plain, -1)
    assert not (changed & ~cover).any() and changed.sum() > 0.9 * cover.sum()
    cyan_rows, cyan_cols = _rectangle(objects[1], 30, 50)
    assert cyan_rows.start == 0 and cyan_cols.stop == S  # clipped at the corner, still pasted
    assert (out[cyan_rows, cyan_cols] == CYAN).all()

    # The colour scale comes after the objects (PARE's order), so it tints them too.
    tinted = augment(_sample(), replace(geometry, objects=objects[:1], color=(0.5, 1.0, 1.0)))
    assert (tinted["image"][magenta_rows, magenta_cols] == (127, 0, 255)).all()


def test_occlusion_and_blur_change_pixels_only(cutouts):
    sample = _sample(1)
    geometry = AugmentParams(scale=0.9, rotation_deg=-20.0, flip=True, shift=(0.05, -0.02))
    objects = tuple(
        PastedObject(str(p), 1.0, (0.2 + 0.3 * i, 0.5))
        for i, p in enumerate(occluder_files(cutouts))
    )
    plain = augment(sample, geometry)
    styled = augment(sample, replace(geometry, objects=objects, motion_blur=(7, 0, 2, 6, 5)))
    assert np.any(plain["image"] != styled["image"], -1).mean() > 0.2
    for key in ("keypoints_2d", "part_labels", "pose", "joints_3d", "h36m_3d", "intrinsics"):
        np.testing.assert_array_equal(plain[key], styled[key], err_msg=key)
    assert plain["head_size"] == styled["head_size"]
    assert styled["image"].dtype == np.uint8 and styled["image"].shape == (S, S, 3)


# -- the draw ------------------------------------------------------------------------------------


def test_draws_follow_pare(cutouts):
    """1-7 objects per crop, scales U(0.2, 1.0), centres anywhere on the crop, every cut-out
    used; motion blur on about half the crops with 3/5/7-pixel line kernels."""
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(occluders=str(cutouts), motion_blur_prob=0.5)
    draws = [draw_params(rng, cfg) for _ in range(2000)]
    counts = np.array([len(d.objects) for d in draws])
    assert set(counts) == set(range(1, 8)) and abs(counts.mean() - 4) < 0.15
    objects = [o for d in draws for o in d.objects]
    scales = np.array([o.scale for o in objects])
    centres = np.array([o.center for o in objects])
    assert 0.2 <= scales.min() < 0.21 and 0.99 < scales.max() < 1.0
    assert centres.min() >= 0 and centres.max() < 1 and abs(centres.mean() - 0.5) < 0.02
    assert {Path(o.path).name for o in objects} == {"a_magenta.png", "b_cyan.png", "c_yellow.png"}
    blurs = [d.motion_blur for d in draws if d.motion_blur is not None]
    assert abs(len(blurs) / len(draws) - 0.5) < 0.04
    assert {b[0] for b in blurs} == {3, 5, 7}
    assert all(0 <= v < k for k, *ends in blurs for v in ends)
    assert all(y0 != y1 for _, x0, y0, x1, y1 in blurs if x0 == x1)  # never a single dot


def test_same_seed_same_pixels_and_earlier_draws_unchanged(cutouts):
    cfg = AugmentConfig(occluders=str(cutouts), motion_blur_prob=1.0, rotation_prob=1.0)
    first = draw_params(np.random.default_rng(7), cfg)
    again = draw_params(np.random.default_rng(7), cfg)
    assert first == again and first.objects and first.motion_blur
    image = augment(_sample(), first)["image"]
    np.testing.assert_array_equal(image, augment(_sample(), again)["image"])
    other = augment(_sample(), draw_params(np.random.default_rng(8), cfg))["image"]
    assert not np.array_equal(image, other)
    # Switching occlusion and blur on draws after everything else: a run's crops keep their
    # geometry and colour.
    base = draw_params(np.random.default_rng(7), AugmentConfig(rotation_prob=1.0))
    assert replace(first, objects=(), motion_blur=None) == base


# -- the image operations against references -----------------------------------------------------


def test_motion_blur_is_a_normalised_line_correlated_with_mirrored_edges():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 30, 3)).astype(np.float32)
    for k, x0, y0, x1, y1 in [(7, 0, 3, 6, 1), (5, 2, 0, 2, 4), (3, 2, 2, 0, 0), (7, 1, 6, 4, 0)]:
        kernel = motion_blur_kernel(k, x0, y0, x1, y1)
        taps = np.argwhere(kernel > 0)  # (row, col)
        assert kernel.shape == (k, k) and np.isclose(kernel.sum(), 1)
        assert np.allclose(kernel[kernel > 0], 1 / len(taps))
        assert len(taps) == max(abs(x1 - x0), abs(y1 - y0)) + 1
        assert kernel[y0, x0] > 0 and kernel[y1, x1] > 0
        major = 1 if abs(x1 - x0) >= abs(y1 - y0) else 0  # column or row
        ordered = taps[np.argsort(taps[:, major])]
        assert (np.diff(ordered[:, major]) == 1).all()  # one pixel per step along the line
        assert (np.abs(np.diff(ordered[:, 1 - major])) <= 1).all()  # 8-connected
        reference = np.stack(
            [ndimage.correlate(image[..., c], kernel, mode="mirror") for c in range(3)], -1
        )
        np.testing.assert_allclose(motion_blur(image, kernel), reference, atol=1e-3)


def test_cutouts_shrink_by_exact_area_averages():
    """make_occluders' resize (PARE's cv2 INTER_AREA) against block means: halving is the
    2 x 2 means, other factors the block means of the input repeated n_out times."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 36, 4), dtype=np.uint8)
    blocks = image.astype(float).reshape(12, 2, 18, 2, 4).mean((1, 3))
    np.testing.assert_array_equal(make_occluders.resize_area(image, 0.5), np.floor(blocks + 0.5))
    odd = rng.integers(0, 256, (23, 23, 3), dtype=np.uint8)
    repeated = odd.astype(float).repeat(7, 0).repeat(7, 1)  # 161 x 161: 23 x 23 blocks of 7 x 7
    reference = np.rint(repeated.reshape(7, 23, 7, 23, 3).mean((1, 3)))
    assert make_occluders.resize_area(odd, 0.3).shape == (7, 7, 3)
    assert np.abs(make_occluders.resize_area(odd, 0.3) - reference).max() <= 1  # ties: float


def test_pasted_objects_are_resampled_close_to_pares_area_average(tmp_path):
    """PIL's Hamming filter stands in for cv2's INTER_AREA when pasting: within a few grey
    levels of the exact area average over PARE's scales."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    colour = np.asarray(Image.fromarray(coarse).resize((150, 110), Image.Resampling.BICUBIC))
    rgba = np.dstack([colour, np.full((110, 150), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "o.png")
    black = np.zeros((S, S, 3), np.uint8)
    for scale in (0.25, 0.5, 0.75, 1.0):
        obj = PastedObject(str(tmp_path / "o.png"), scale, (0.5, 0.5))
        out = paste_objects(black, (obj,))
        rows, cols = _rectangle(obj, 150, 110)
        exact = make_occluders.resize_area(rgba, scale * S / 256)[..., :3]
        assert out[rows, cols].shape == exact.shape
        assert np.abs(out[rows, cols].astype(float) - exact).mean() < 2.0, scale
        assert not out[~_mask(rows, cols)].any()


def _mask(rows, cols):
    mask = np.zeros((S, S), bool)
    mask[rows, cols] = True
    return mask


def test_missing_or_empty_occluder_folder_is_a_one_line_config_error(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ConfigError, match=r"folder not found: .*no_such_folder") as err:
        occluder_files(missing)
    assert "\n" not in str(err.value) and "make_occluders.py" in str(err.value)
    with pytest.raises(ConfigError, match="folder not found"):  # the loader raises the same
        draw_params(np.random.default_rng(0), AugmentConfig(occluders=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no cut-outs")
    with pytest.raises(ConfigError, match=r"no \*\.png cut-outs in .*empty") as err:
        occluder_files(empty)
    assert "\n" not in str(err.value)


def test_config_checks_without_touching_the_disk(tmp_path):
    # A run's config.yaml loads where its occluder folder is absent (evaluation, prediction).
    cfg = load_config([], [f"data.augment.occluders={tmp_path / 'elsewhere'}"])
    assert cfg.data.augment.occluders.endswith("elsewhere")
    with pytest.raises(ConfigError, match="alternatives"):
        load_config([], ["data.augment.occluders=x", "data.augment.occlusion_prob=0.3"])
    with pytest.raises(ConfigError, match=r"motion_blur_prob=1.5 must be in \[0, 1\]"):
        load_config([], ["data.augment.motion_blur_prob=1.5"])
    demo = load_config([ROOT / "configs" / "demo.yaml"]).data.augment
    assert demo.occluders == "" and demo.motion_blur_prob == 0.0 and demo.occlusion_prob == 0.0


# -- shards/make_occluders.py on a fake VOC folder -------------------------------------------------

# (name, truncated, difficult, box (xmin, ymin, xmax, ymax), mask shape) per object, in XML order;
# the object with index i has value i + 1 in SegmentationObject.
VOC_OBJECTS = {
    "2008_000001": [
        ("car", 0, 0, (10, 12, 70, 52), "rect"),  # kept
        ("person", 0, 0, (80, 10, 120, 90), "rect"),  # people are the subject, never occluders
        ("dog", 1, 0, (10, 60, 50, 100), "rect"),  # truncated
        ("cat", 0, 1, (60, 60, 100, 100), "rect"),  # difficult
        ("bottle", 0, 0, (130, 10, 150, 30), "rect"),  # 400 mask pixels < 500
        ("chair", 0, 0, (110, 96, 154, 140), "disc"),  # kept
    ],
    "2008_000002": [("car", 0, 0, (10, 10, 60, 60), "rect")],  # image not segmented
    "2008_000003": [("bird", 0, 0, (4, 6, 64, 46), "disc")],  # kept
}
EXPECTED = ["2008_000001_00.png", "2008_000001_05.png", "2008_000003_00.png"]


def _fake_voc(root: Path) -> Path:
    """VOC 2012's layout: JPEGImages/*.jpg, SegmentationObject/*.png (palette indices, 255 on
    object outlines as VOC marks them) and Annotations/*.xml."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationObject", "Annotations"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, 768).tolist()
    for stem, objects in VOC_OBJECTS.items():
        h, w = 150, 160
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR).save(
            voc / "JPEGImages" / f"{stem}.jpg", quality=95
        )
        labels = np.zeros((h, w), np.uint8)
        segmented = stem != "2008_000002"
        root_el = ET.Element("annotation")
        ET.SubElement(root_el, "filename").text = f"{stem}.jpg"
        ET.SubElement(root_el, "segmented").text = "1" if segmented else "0"
        for i, (name, truncated, difficult, (x0, y0, x1, y1), shape) in enumerate(objects):
            yy, xx = np.mgrid[0:h, 0:w]
            inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            if shape == "disc":
                cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2 - 1
                inside &= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            outline = ndimage.binary_dilation(inside) & ~inside
            labels[outline & (labels == 0)] = 255
            labels[inside] = i + 1
            obj = ET.SubElement(root_el, "object")
            ET.SubElement(obj, "name").text = name
            ET.SubElement(obj, "truncated").text = str(truncated)
            ET.SubElement(obj, "difficult").text = str(difficult)
            box = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1), strict=True):
                ET.SubElement(box, key).text = str(value)
        ET.ElementTree(root_el).write(voc / "Annotations" / f"{stem}.xml")
        if segmented:
            seg = Image.fromarray(labels, "P")
            seg.putpalette(palette)
            seg.save(voc / "SegmentationObject" / f"{stem}.png")
    return voc


def _expected_alpha(mask: np.ndarray) -> np.ndarray:
    """Brute force: 255 where the whole 8 x 8 ellipse around a pixel (anchored at its centre,
    outside the box counting as object) is object, 192 on the rest of the object, 0 outside;
    then half size as 2 x 2 means, halves rounded up (cv2.resize's exact-halving path)."""
    h, w = mask.shape
    full = np.zeros((h, w))
    for y, x in zip(*np.nonzero(mask), strict=True):
        inner = all(
            not (0 <= y + i - 4 < h and 0 <= x + j - 4 < w) or mask[y + i - 4, x + j - 4]
            for i, j in zip(*np.nonzero(make_occluders.ELLIPSE_8), strict=True)
        )
        full[y, x] = 255 if inner else 192
    return np.floor(full.reshape(h // 2, 2, w // 2, 2).mean((1, 3)) + 0.5)


def test_voc_cutouts_are_pare_objects_with_their_masks_as_alpha(tmp_path, capsys):
    voc = _fake_voc(tmp_path)
    out = tmp_path / "occluders"
    assert make_occluders.main(["--voc", str(voc), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == EXPECTED  # no temporaries left
    report = capsys.readouterr().out
    assert report.startswith("wrote 3 cut-outs")
    for why in ("1 person", "1 truncated", "1 difficult", "1 under 500 mask pixels"):
        assert why in report
    assert "1 image without instance masks" in report
    for name in EXPECTED:
        stem, index = name[:-4].rsplit("_", 1)
        _, _, _, (x0, y0, x1, y1), _ = VOC_OBJECTS[stem][int(index)]
        labels = np.asarray(Image.open(voc / "SegmentationObject" / f"{stem}.png"))
        photo = np.asarray(Image.open(voc / "JPEGImages" / f"{stem}.jpg"))
        with Image.open(out / name) as im:
            assert im.mode == "RGBA"
            rgba = np.asarray(im)
        assert rgba.shape == ((y1 - y0) // 2, (x1 - x0) // 2, 4)
        mask = labels[y0:y1, x0:x1] == int(index) + 1
        np.testing.assert_array_equal(rgba[..., 3], _expected_alpha(mask))
        colour = np.floor(
            0.5 + photo[y0:y1, x0:x1].reshape((y1 - y0) // 2, 2, (x1 - x0) // 2, 2, 3).mean((1, 3))
        )
        np.testing.assert_array_equal(rgba[..., :3], colour)
    # The folder is what data.augment.occluders reads.
    assert [p.name for p in occluder_files(out)] == EXPECTED


def test_missing_voc_folder_names_the_expected_path(tmp_path, capsys):
    code = make_occluders.main(["--voc", str(tmp_path / "VOC2012"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        f"error: Pascal VOC 2012 folder not found: expected {tmp_path / 'VOC2012' / 'Annotations'}"
    )
    assert not (tmp_path / "o").exists()
