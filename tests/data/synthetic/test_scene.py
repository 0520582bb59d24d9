"""Synthetic people must show which way they face, as real people do."""

import numpy as np
import pytest

from pare.body import SMPLBody
from pare.data.synthetic.scene import camera_at, random_appearance
from pare.render import Mesh, render


@pytest.fixture(scope="module")
def bodies():
    return SMPLBody()


def _front_and_mirrored_back(bodies, appearance) -> tuple[np.ndarray, np.ndarray]:
    """The body at rest seen from the front, and from behind mirrored left-right: without any
    front/back cue the two pictures are the same."""
    body = bodies.posed_numpy("neutral", np.zeros(10), np.zeros((1, 72)), np.zeros((1, 3)))
    vertices = body["vertices"][0]
    centre = vertices.mean(0)
    views = []
    for azimuth in (0.0, np.pi):
        position = centre + 3.0 * np.array([np.sin(azimuth), 0.0, np.cos(azimuth)])
        camera = camera_at(position, centre, 96, 160, 300.0)
        mesh = Mesh(vertices, bodies.faces, bodies.part_labels, appearance.vertex_colors)
        views.append(render([mesh], camera, np.zeros((160, 96, 3), np.uint8)).image.astype(float))
    return views[0], views[1][:, ::-1]


def test_hair_and_print_tell_front_from_back(bodies):
    plain = random_appearance(np.random.default_rng(1), bodies.part_labels)
    marked = random_appearance(np.random.default_rng(1), bodies.part_labels, bodies.rest_vertices)
    front, back = _front_and_mirrored_back(bodies, plain)
    plain_gap = np.abs(front - back).mean()
    front, back = _front_and_mirrored_back(bodies, marked)
    marked_gap = np.abs(front - back).mean()
    assert marked_gap > 1.5 * plain_gap, (plain_gap, marked_gap)

    changed = np.any(plain.vertex_colors != marked.vertex_colors, axis=1)
    rest, labels = bodies.rest_vertices, bodies.part_labels
    head = labels == 15
    # Hair sits behind the head's centre or on top; the print on the front of the chest.
    hair = changed & head
    assert hair.sum() > 0.3 * head.sum()
    assert rest[hair, 2].mean() < rest[head, 2].mean()  # mostly behind
    lo, hi = rest[head].min(0), rest[head].max(0)
    face = head & (rest[:, 2] > lo[2] + 0.75 * (hi[2] - lo[2])) & (rest[:, 1] < (lo[1] + hi[1]) / 2)
    assert face.any() and not (hair & face).any()
    chest_print = changed & ~head
    assert chest_print.any() and np.all(np.isin(labels[chest_print], (6, 9)))
    assert rest[chest_print, 2].min() > rest[np.isin(labels, (6, 9)), 2].mean()
