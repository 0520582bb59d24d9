"""Smooth, plausible SMPL motion for synthetic data: walking, waving and squatting clips.

Joint angles are built in each joint's SMPL frame (x = subject's left, y = up, z = forward at
rest) from a periodic activity pattern plus slow random drift, clipped to joint limits, and
converted to axis-angle. Positive x rotation at the knee bends it; negative x at the hip lifts
the thigh forward; the shoulders start lowered from SMPL's T-pose towards the body.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

ACTIVITIES = ("walk", "wave", "squat")

# (joint, axis) -> (min, max) in radians, the range the generator keeps to.
_LIMITS = {
    (1, 0): (-1.6, 0.5),
    (2, 0): (-1.6, 0.5),
    (4, 0): (0.0, 2.3),
    (5, 0): (0.0, 2.3),
    (18, 1): (-2.4, 0.0),
    (19, 1): (0.0, 2.4),
    (7, 0): (-0.6, 0.6),
    (8, 0): (-0.6, 0.6),
}


def _drift(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """A slow random signal: a sum of three sinusoids below 0.5 Hz."""
    out = np.zeros_like(t)
    for _ in range(3):
        out += (
            amplitude
            / 3
            * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
        )
    return out


def body_pose_sequence(rng: np.random.Generator, times: np.ndarray, activity: str) -> np.ndarray:
    """(T, 23, 3) axis-angle body pose (joints 1..23) for the given times in seconds."""
    if activity not in ACTIVITIES:
        raise ValueError(f"unknown activity {activity!r}; choose from {ACTIVITIES}")
    n = len(times)
    euler = np.zeros((n, 24, 3))  # per-joint small rotations about x, y, z (radians)
    freq = rng.uniform(0.7, 1.1)
    phase = 2 * np.pi * freq * times + rng.uniform(0, 2 * np.pi)
    swing = rng.uniform(0.3, 0.5)
    arm_down = rng.uniform(1.1, 1.35)  # how far the arms are lowered from the T-pose
    if activity == "walk":
        euler[:, 1, 0] = -swing * np.sin(phase)
        euler[:, 2, 0] = swing * np.sin(phase)
        euler[:, 4, 0] = 0.15 + 0.55 * np.clip(np.sin(phase + np.pi / 2), 0, None)
        euler[:, 5, 0] = 0.15 + 0.55 * np.clip(np.sin(phase - np.pi / 2), 0, None)
        arm_swing = 0.6 * swing * np.sin(phase)
        euler[:, 18, 1] = -(0.25 + 0.2 * (1 + np.sin(phase)))
        euler[:, 19, 1] = 0.25 + 0.2 * (1 - np.sin(phase))
        euler[:, 3, 1] = 0.08 * np.sin(phase)
    elif activity == "wave":
        arm_swing = np.zeros(n)
        euler[:, 18, 1] = -(1.3 + 0.4 * np.sin(2 * phase))
        euler[:, 19, 1] = 0.3 + _drift(rng, times, 0.2)
        euler[:, 4, 0] = 0.1 + np.abs(_drift(rng, times, 0.2))
        euler[:, 5, 0] = 0.1 + np.abs(_drift(rng, times, 0.2))
    else:  # squat
        depth = 0.5 * (1 - np.cos(0.6 * phase))  # 0..1
        euler[:, 1, 0] = euler[:, 2, 0] = -1.3 * depth
        euler[:, 4, 0] = euler[:, 5, 0] = 2.0 * depth
        euler[:, 7, 0] = euler[:, 8, 0] = -0.5 * depth
        euler[:, 3, 0] = 0.3 * depth
        arm_swing = -1.0 * depth  # arms forward for balance
        euler[:, 18, 1] = -0.3 - 0.3 * depth
        euler[:, 19, 1] = 0.3 + 0.3 * depth
    for joint in (3, 6, 9, 12, 15):
        for axis in range(3):
            euler[:, joint, axis] += _drift(rng, times, 0.08)
    for joint in (1, 2, 16, 17, 20, 21):
        euler[:, joint, 2] += _drift(rng, times, 0.1)
    for (joint, axis), (lo, hi) in _LIMITS.items():
        euler[:, joint, axis] = np.clip(euler[:, joint, axis], lo, hi)

    rotvec = np.zeros((n, 24, 3))
    for joint in range(1, 24):
        rotvec[:, joint] = Rotation.from_euler("xyz", euler[:, joint]).as_rotvec()
    # Shoulders: lower the arm from the T-pose, then swing it forward/back; the wave raises the
    # left arm instead.
    lower_left = -arm_down + (1.9 if activity == "wave" else 0.0)
    for joint, lower, sign in ((16, lower_left, 1.0), (17, arm_down, -1.0)):
        swing_x = sign * arm_swing if activity == "walk" else arm_swing  # opposite to the legs
        shoulder = Rotation.from_euler("x", swing_x[:, None]) * Rotation.from_euler(
            "z", np.full((n, 1), lower)
        )
        rotvec[:, joint] = shoulder.as_rotvec()
    return rotvec[:, 1:]


def heading_and_path(
    rng: np.random.Generator, times: np.ndarray, activity: str, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Yaw angle (T,) and root translation (T, 3) in a y-up world: walkers follow a gentle curve."""
    heading0 = rng.uniform(-np.pi, np.pi)
    turn = rng.uniform(-0.25, 0.25)  # rad/s
    heading = heading0 + turn * times
    if activity != "walk":
        heading = heading0 + _drift(rng, times, 0.3)
        return heading, np.repeat(start[None], len(times), 0)
    speed = rng.uniform(0.6, 1.2)  # m/s
    dt = np.diff(times, prepend=times[0])
    step = (
        speed
        * dt[:, None]
        * np.stack([np.sin(heading), np.zeros_like(heading), np.cos(heading)], 1)
    )
    return heading, start + np.cumsum(step, 0)


def global_orient(heading: np.ndarray) -> np.ndarray:
    """(T, 3) axis-angle: a yaw about the world's up axis (SMPL faces +z at rest)."""
    return Rotation.from_euler("y", heading[:, None]).as_rotvec()
