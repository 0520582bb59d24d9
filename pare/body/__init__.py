"""SMPL body model: safe file reading, the smplx module, the stand-in model, joint sets, and the
one gendered fp32 body (:class:`SMPLBody`) that the model, evaluation and packers share."""

from pare.body.model import (
    GENDER_CODE,
    GENDERS,
    STANDIN,
    EvalAssets,
    build_body_model,
    load_eval_assets,
    resolve_model_file,
    standin_dir,
)
from pare.body.smpl import SMPLBody
from pare.body.smpl_io import read_smpl_file, write_npz

__all__ = [
    "GENDERS",
    "GENDER_CODE",
    "STANDIN",
    "EvalAssets",
    "SMPLBody",
    "build_body_model",
    "load_eval_assets",
    "read_smpl_file",
    "resolve_model_file",
    "standin_dir",
    "write_npz",
]
