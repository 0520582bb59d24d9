"""SMPL body model: safe file reading, the smplx module, the stand-in model and joint sets."""

from pare.body.model import (
    STANDIN,
    EvalAssets,
    build_body_model,
    load_eval_assets,
    resolve_model_file,
    standin_dir,
)
from pare.body.smpl_io import read_smpl_file, write_npz

__all__ = [
    "STANDIN",
    "EvalAssets",
    "build_body_model",
    "load_eval_assets",
    "read_smpl_file",
    "resolve_model_file",
    "standin_dir",
    "write_npz",
]
