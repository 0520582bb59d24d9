"""One gendered SMPL body in fp32 for every user: the model's output layer, evaluation's ground
truth, and the packers' and synthetic generators' world-frame bodies.

Legend: B batch (T frames in the numpy interface), V = 6890 vertices, F = 13776 faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pare.body.joints import SMPL_24, keypoints_from_model
from pare.body.model import GENDERS, STANDIN, build_body_model, load_eval_assets

STANDIN_LABEL = "STAND-IN body model (generated; not SMPL)"
STANDIN_TAG = "STAND-IN"  # the W&B tag of runs that used it


class SMPLBody(nn.Module):
    """SMPL for up to three genders as a fixed fp32 layer, with the joint sets the project uses.

    Every output is in metres: ``vertices`` (B, V, 3), ``smpl_joints`` (B, 24, 3) SMPL's
    kinematic joints, ``h36m_3d`` (B, 17, 3) the H36M regressor applied to the mesh,
    ``keypoints_3d`` (B, 49, 3) SPIN/PARE's 49 joints (:data:`pare.body.joints.KEYPOINTS_49`,
    built with ``J_regressor_extra.npy``) and ``joints_3d`` (B, 24, 3) their last 24, SPIN's
    ground-truth joints (:data:`pare.body.joints.SPIN_GT_24`). Also ``faces`` (F, 3) int64,
    ``part_labels`` (V,) SMPL part 0..23 of each vertex, and ``is_standin``.

    The module has no parameters and no persistent buffers, so a model holding it saves no
    body-model tensors in its checkpoints, and those load onto the stand-in or the real SMPL
    alike. Joint regressors are non-persistent (K, V) buffers applied to the vertices in
    :meth:`forward`.

    Raises ``ValueError`` for a gender outside :data:`pare.body.GENDERS`, and the errors of
    :func:`pare.body.build_body_model` and :func:`pare.body.load_eval_assets` for missing files.
    """

    def __init__(self, model_path: str = STANDIN, genders: Sequence[str] = GENDERS) -> None:
        super().__init__()
        unknown = [g for g in genders if g not in GENDERS]
        if unknown or not genders:
            raise ValueError(f"genders must be a non-empty subset of {GENDERS}, got {genders!r}")
        self.genders = tuple(genders)
        self.models = nn.ModuleDict(
            {
                g: build_body_model(
                    model_path,
                    g,
                    create_betas=False,
                    create_global_orient=False,
                    create_body_pose=False,
                    create_transl=False,
                )
                for g in self.genders
            }
        )
        for module in self.models.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buffer, persistent=False)
        assets = load_eval_assets(model_path)
        h36m = torch.as_tensor(assets.h36m_regressor, dtype=torch.float32)
        self.register_buffer("h36m_regressor", h36m, persistent=False)  # (17, V)
        extra = torch.as_tensor(assets.extra_regressor, dtype=torch.float32)
        self.register_buffer("extra_regressor", extra, persistent=False)  # (9, V)
        self.part_labels = assets.part_labels  # (V,)
        first = self.models[self.genders[0]]
        self.faces = first.faces.astype(np.int64)  # (F, 3)
        self.is_standin = first.is_standin
        # How results computed with this body are labelled wherever they are shown: numbers from
        # the stand-in must never pass for SMPL ones.
        self.label = STANDIN_LABEL if self.is_standin else "SMPL body model"

    def _model(self, gender: str):
        if gender not in self.models:
            raise ValueError(f"gender {gender!r} is not loaded; this body has {self.genders}")
        return self.models[gender]

    def forward(
        self,
        pose: torch.Tensor,
        betas: torch.Tensor,
        gender: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """SMPL in fp32, also under autocast.

        ``pose`` is (B, 24, 3, 3) rotation matrices or (B, 72) axis-angle, global orientation
        first; ``betas`` (B, 10); ``gender`` (B,) codes (:data:`pare.body.GENDER_CODE`: 0
        neutral, 1 male, 2 female), or None for the first loaded gender; ``transl`` (B, 3)
        added to every output, or None. Returns the five outputs of the class docstring.
        Raises ``ValueError`` for a code whose gender is not loaded.
        """
        with torch.autocast(pose.device.type, enabled=False):
            pose, betas = pose.float(), betas.float()
            transl = transl.float() if transl is not None else None
            if gender is None:
                vertices, joints = self._smplx(self._model(self.genders[0]), pose, betas, transl)
            else:
                vertices, joints = self._by_gender(pose, betas, gender, transl)
            return self._outputs(vertices, joints)

    def _outputs(self, vertices: torch.Tensor, joints: torch.Tensor) -> dict[str, torch.Tensor]:
        """The five outputs from smplx's vertices (B, V, 3) and its 45 joints (B, 45, 3)."""
        h36m = torch.einsum("jv,bvc->bjc", self.h36m_regressor, vertices)  # (B, 17, 3)
        extra = torch.einsum("jv,bvc->bjc", self.extra_regressor, vertices)  # (B, 9, 3)
        keypoints = keypoints_from_model(joints, extra)  # (B, 49, 3)
        return {
            "vertices": vertices,  # (B, V, 3)
            "smpl_joints": joints[:, : len(SMPL_24)],  # (B, 24, 3)
            "h36m_3d": h36m,
            "keypoints_3d": keypoints,
            "joints_3d": keypoints[:, -24:],  # (B, 24, 3) SPIN's ground-truth joints
        }

    @staticmethod
    def _smplx(model, pose, betas, transl) -> tuple[torch.Tensor, torch.Tensor]:
        """smplx's vertices (B, V, 3) and its 45 joints (B, 45, 3)."""
        rotmat = pose.ndim == 4
        out = model(
            betas=betas,
            global_orient=pose[:, :1] if rotmat else pose[:, :3],
            body_pose=pose[:, 1:] if rotmat else pose[:, 3:],
            transl=transl,
            pose2rot=not rotmat,
        )
        return out.vertices, out.joints

    def _by_gender(self, pose, betas, gender, transl) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample through the model of its gender code, scattered back in batch order."""
        n = len(pose)
        vertices = torch.zeros(n, self.h36m_regressor.shape[1], 3, device=pose.device)
        joints = None
        covered = torch.zeros(n, dtype=torch.bool, device=pose.device)
        for code, name in enumerate(GENDERS):
            chosen = gender == code
            if not chosen.any():
                continue
            v, j = self._smplx(
                self._model(name),
                pose[chosen],
                betas[chosen],
                transl[chosen] if transl is not None else None,
            )
            if joints is None:
                joints = torch.zeros(n, j.shape[1], 3, device=pose.device)  # (B, 45, 3)
            vertices[chosen], joints[chosen] = v, j
            covered |= chosen
        if not covered.all():
            bad = sorted(set(gender[~covered].tolist()))
            raise ValueError(f"gender codes {bad} are not in 0..{len(GENDERS) - 1}")
        return vertices, joints

    # ---- numpy interface, world frame: the packers and the synthetic generators ----

    @torch.no_grad()
    def posed_numpy(
        self, gender: str, betas: np.ndarray, pose: np.ndarray, transl: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One person over T frames: betas (10+,) (the first 10 used), axis-angle pose (T, 72),
        transl (T, 3) -> the five outputs (T, ...) as float64 in the world frame."""
        model = self._model(gender)
        t = len(pose)
        vertices, joints = self._smplx(
            model,
            torch.as_tensor(pose, dtype=torch.float32),
            torch.as_tensor(betas[:10], dtype=torch.float32).expand(t, -1),
            torch.as_tensor(transl, dtype=torch.float32),
        )
        return {k: v.double().cpu().numpy() for k, v in self._outputs(vertices, joints).items()}

    @torch.no_grad()
    def shaped_template(self, gender: str, betas: np.ndarray) -> np.ndarray:
        """The shaped body at zero pose and zero translation (V, 3), float64."""
        model = self._model(gender)
        betas = torch.as_tensor(betas[:10], dtype=torch.float32)
        shaped = model.v_template + torch.einsum("vck,k->vc", model.shapedirs, betas)
        return shaped.double().cpu().numpy()

    @torch.no_grad()
    def rest_root(self, gender: str, betas: np.ndarray) -> np.ndarray:
        """The root joint (3,) of the shaped body at zero pose and zero translation: the point
        SMPL's global rotation turns about."""
        template = torch.from_numpy(self.shaped_template(gender, betas)).float()
        return (self._model(gender).J_regressor[0] @ template).double().cpu().numpy()

    @property
    def rest_vertices(self) -> np.ndarray:
        """The neutral body at rest (V, 3) float64: where clothing and hair go, whatever the
        person's shape."""
        return self._model("neutral").v_template.double().cpu().numpy()
