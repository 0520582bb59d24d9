"""The rasteriser against brute-force ray casting, and its part map against vertex labels."""

import numpy as np
import pytest
import torch
from PIL import Image

from pare.body import build_body_model, load_eval_assets
from pare.data.synthetic.scene import box_mesh, camera_at
from pare.render import Camera, Mesh, rasterize, render


def _ray_cast(vertices, faces, camera):
    """Brute force: for every pixel centre, the nearest triangle hit by its ray (Moller-Trumbore)."""
    cam = camera.to_camera(vertices)
    kinv = np.linalg.inv(camera.K)
    face_of = np.full((camera.height, camera.width), -1)
    depth = np.full((camera.height, camera.width), np.inf)
    for y in range(camera.height):
        for x in range(camera.width):
            d = kinv @ [x + 0.5, y + 0.5, 1.0]
            for f, (a, b, c) in enumerate(faces):
                v0, v1, v2 = cam[a], cam[b], cam[c]
                e1, e2 = v1 - v0, v2 - v0
                p = np.cross(d, e2)
                det = e1 @ p
                if abs(det) < 1e-12:
                    continue
                s = -v0
                u = (s @ p) / det
                q = np.cross(s, e1)
                v = (d @ q) / det
                t = (e2 @ q) / det
                if u >= 0 and v >= 0 and u + v <= 1 and t > 0 and t * d[2] < depth[y, x]:
                    depth[y, x], face_of[y, x] = t * d[2], f
    return face_of, depth


def test_rasterizer_matches_ray_casting():
    rng = np.random.default_rng(0)
    boxes = [
        box_mesh(rng.uniform(-0.6, 0.6, 3), rng.uniform(0.3, 0.8, 3), (1, 0, 0)) for _ in range(3)
    ]
    verts = np.concatenate([b.vertices for b in boxes])
    faces = np.concatenate([b.faces + 8 * i for i, b in enumerate(boxes)])
    camera = camera_at(np.array([1.5, 1.0, 3.0]), np.zeros(3), 40, 30, 35.0)
    frag = rasterize(verts, faces, camera)
    face_ref, depth_ref = _ray_cast(verts, faces, camera)
    # Closed boxes: the nearest hit is always a front face, so the two must agree everywhere
    # except on pixels whose centre lies within rounding of a triangle edge.
    same = frag.face == face_ref
    assert same.mean() > 0.97
    both = np.isfinite(depth_ref) & frag.mask
    np.testing.assert_allclose(frag.depth[both], depth_ref[both], rtol=1e-9)
    assert (frag.mask == np.isfinite(depth_ref)).mean() > 0.98


def test_nearest_mesh_wins_whatever_the_order():
    near = box_mesh(np.array([0.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5]), (1, 0, 0))
    far = box_mesh(np.array([0.2, 0.0, -1.0]), np.array([1.0, 1.0, 1.0]), (0, 0, 1))
    camera = camera_at(np.array([0.0, 0.0, 4.0]), np.zeros(3), 64, 64, 60.0)
    a = render([near, far], camera)
    b = render([far, near], camera)
    np.testing.assert_array_equal(a.image, b.image)
    centre = a.image[32, 32]
    assert centre[0] > 100 and centre[2] < 30  # the red box in front covers the middle
    assert (a.mesh == 0).sum() > 0 and (a.mesh == 1).sum() > 0


@pytest.fixture(scope="module")
def posed_body():
    model = build_body_model("standin")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = model(body_pose=0.4 * torch.randn(1, 69, generator=gen))
    labels = load_eval_assets("standin").part_labels
    return out.vertices[0].double().numpy(), model.faces.astype(np.int64), labels


def test_part_map_agrees_with_projected_vertex_labels(posed_body, test_output):
    verts, faces, labels = posed_body
    camera = camera_at(np.array([0.8, 0.2, 3.0]), np.array([0.0, -0.3, 0.0]), 256, 320, 350.0)
    layers = render([Mesh(verts, faces, labels)], camera)
    assert layers.image.shape == (320, 256, 3) and layers.image.dtype == np.uint8
    # Vertices visible to the camera: their pixel's rendered depth equals their own depth.
    xy = camera.project(verts)
    z = camera.to_camera(verts)[:, 2]
    px = np.floor(xy).astype(int)
    at_depth = layers.depth[px[:, 1], px[:, 0]]
    visible = np.abs(at_depth - z) < 0.005
    assert visible.sum() > 1000
    agree = layers.parts[px[visible, 1], px[visible, 0]] == labels[visible] + 1
    assert agree.mean() > 0.95
    # Every visible part shows up in the map, and background stays 0.
    assert set(np.unique(layers.parts)) - {0} == set(labels[visible] + 1)
    assert (layers.parts[~layers.mask] == 0).all()
    # For a person to look at: the shaded render beside its part map.
    part_view = (layers.parts[..., None] * np.array([37, 91, 151]) % 256).astype(np.uint8)
    Image.fromarray(np.concatenate([layers.image, part_view], 1)).save(
        test_output / "standin_render.png"
    )


def test_back_faces_and_behind_camera_are_culled(posed_body):
    verts, faces, _ = posed_body
    camera = camera_at(np.array([0.0, 0.0, 3.0]), np.zeros(3), 64, 64, 80.0)
    normal = rasterize(verts, faces, camera)
    inside_out = rasterize(verts, faces[:, ::-1], camera)  # every face now points inward
    # Same silhouette, but culling now keeps the far side of the body: it is deeper.
    both = normal.mask & inside_out.mask
    assert both.sum() > 0.9 * normal.mask.sum()
    assert inside_out.depth[both].mean() > normal.depth[both].mean() + 0.05
    behind = Camera(camera.K, camera.R, camera.t - [0, 0, 10.0], 64, 64)
    assert not rasterize(verts, faces, behind).mask.any()


def test_close_up_is_chunked_without_changing_the_result(posed_body):
    verts, faces, _ = posed_body
    camera = camera_at(np.array([0.0, 0.1, 1.2]), np.array([0.0, 0.1, 0.0]), 200, 200, 400.0)
    whole = rasterize(verts, faces, camera)
    chunked = rasterize(verts, faces, camera, max_pairs=5000)
    np.testing.assert_array_equal(whole.face, chunked.face)
    np.testing.assert_array_equal(whole.depth, chunked.depth)


@pytest.mark.parametrize("size", [128, 224, 256])
def test_overlay_frames_the_mesh_the_same_at_any_crop_size(size):
    """PARE's translation assumes f = 5000 px on a 224 px crop: a box half a metre wide at 25 m
    covers 0.5 * 5000 / 25 = 100 of 224 px, i.e. the same fraction of a crop of any size."""
    from pare.visualize import overlay

    box = box_mesh(np.zeros(3), np.array([0.5, 0.5, 0.5]), np.ones(3))
    picture = overlay(
        np.zeros((size, size, 3), np.uint8),
        box.vertices,
        box.faces,
        np.array([0.0, 0.0, 25.0]),
        np.zeros((0, 2)),
        np.zeros((1, 3)),
    )
    covered = np.nonzero(picture[:, :size].any(-1).any(0))[0]  # columns the box reaches
    width = (covered.max() - covered.min() + 1) / size
    # The front face spans 100/224 of the crop, the back face (25.25 m) slightly less.
    assert width == pytest.approx(0.5 * 5000 / 24.75 / 224, abs=2 / size)
