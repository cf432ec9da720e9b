"""A non-editable install carries the configs: ``pip install .`` into a fresh venv, then
``python -m her2study --cfg job +exp=paper`` from an empty folder.

The package is built into a wheel with pip (build isolation, as a user's ``pip install .``) and
installed without dependencies into a new venv, which borrows the test environment's installed
dependencies through a plain path entry (no ``.pth`` files of that environment are executed, so
its editable install of her2study is not seen). Marked slow: CI runs it once (``.ci/run``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import REPO


def source_copy(dest: Path) -> Path:
    """The checkout's tracked files (as they are in the working tree) copied to ``dest``: what a
    user's fresh clone holds. Building there keeps setuptools' build/ and *.egg-info/ out of the
    checkout."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_a_non_editable_install_runs_the_paper_config_from_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    source = source_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(wheels.glob("her2study-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]  # this environment's packages, after the venv's own
    (Path(site) / "zz_test_dependencies.pth").write_text(deps + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import her2study, her2study.conf as c; print(her2study.__file__, c.__file__)",
        ],
        cwd=empty,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.count(str(env_dir)) == 2, where  # the installed package and its configs
    res = subprocess.run(
        [str(py), "-m", "her2study", "--cfg", "job", "+exp=paper"],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "_target_: her2study.tasks.paper.run" in res.stdout
    assert "ring_widths_mm:" in res.stdout and "name: logistic" in res.stdout
    assert list(empty.iterdir()) == []  # composing wrote nothing
    # the experiment file and the model group are packaged too
    res = subprocess.run(
        [str(py), "-m", "her2study", "--cfg", "job", "+exp=search", "model=ridge"],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "n_trials:" in res.stdout and "name: ridge" in res.stdout
