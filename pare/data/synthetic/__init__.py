"""Synthetic 3DPW and MPII in their real on-disk formats, rendered with a body model. Nothing on
the real-data path imports this package."""
