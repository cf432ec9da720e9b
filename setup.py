"""Package layout (everything else is in pyproject.toml).

The repository keeps its configs at the top level (``conf/``); the installed package carries them
as ``her2study.conf``, which Hydra reads as ``pkg://her2study.conf``, so a non-editable install
runs from any folder.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["her2study", "her2study.*"]), "her2study.conf"],
    package_dir={"her2study.conf": "conf"},
    package_data={"her2study": ["reference/*.csv"], "her2study.conf": ["*.yaml", "*/*.yaml"]},
)
