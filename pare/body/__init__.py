"""SMPL body model: safe file reading, the smplx module, the stand-in model, joint sets, part
labels, and the one gendered fp32 body (:class:`SMPLBody`) that the model, evaluation and packers
share."""

from pare.body.model import (
    BODY_MODEL_RECORD,
    GENDER_CODE,
    GENDERS,
    STANDIN,
    BadRegressor,
    BodyModelMismatch,
    EvalAssets,
    body_model_identity,
    build_body_model,
    describe_identity,
    load_eval_assets,
    load_rest_pose,
    read_body_model_record,
    resolve_model_file,
    standin_dir,
    write_body_model_record,
)
from pare.body.parts import PartLabelError, check_part_labels
from pare.body.smpl import SMPLBody
from pare.body.smpl_io import read_smpl_file, write_npz

__all__ = [
    "BODY_MODEL_RECORD",
    "GENDERS",
    "GENDER_CODE",
    "STANDIN",
    "BadRegressor",
    "BodyModelMismatch",
    "EvalAssets",
    "PartLabelError",
    "SMPLBody",
    "body_model_identity",
    "build_body_model",
    "check_part_labels",
    "describe_identity",
    "load_eval_assets",
    "load_rest_pose",
    "read_body_model_record",
    "read_smpl_file",
    "resolve_model_file",
    "standin_dir",
    "write_body_model_record",
    "write_npz",
]
