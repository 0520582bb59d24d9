"""PARE: 3D human pose and shape from part attention. ``from pare import load_trained_model``
loads a trained model back; the rest lives in the subpackages (``pare.models``, ``pare.data``,
``pare.body``, ...)."""

__all__ = ["load_trained_model"]


def __getattr__(name: str):
    # Imported on first use: ``import pare.config`` (the packers, the config checks) stays free
    # of torch, timm and smplx.
    if name == "load_trained_model":
        from pare.checkpoint import load_trained_model

        return load_trained_model
    raise AttributeError(f"module 'pare' has no attribute {name!r}")
