"""Voxelbase: self-configuring 3D medical image segmentation over a dataset database.

The public Python API mirrors the CLI; each stage lives in its own sub-package.
"""

__version__ = "0.1.0"
