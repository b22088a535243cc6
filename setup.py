"""The source folder `engine/` installs as the package `voxelbase`; `schema/` ships inside it as `voxelbase/schema`.

Metadata lives in pyproject.toml; only the folder-to-package mapping needs code (setuptools cannot rename a folder
while discovering its subpackages declaratively).
"""

from setuptools import find_packages, setup

setup(
    packages=["voxelbase", *(f"voxelbase.{name}" for name in find_packages("engine")), "voxelbase.schema"],
    package_dir={"voxelbase": "engine", "voxelbase.schema": "schema"},
    package_data={"voxelbase.schema": ["*.sql", "*.json"]},
)
