"""inference stage."""

CODE_VERSION = "1"  # bump when this stage's results change: `voxelbase run` redoes the steps it performs
