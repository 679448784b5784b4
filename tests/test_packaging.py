"""Packaging: the LICENSE (BSD 2-Clause with Caffe's notice), the SPDX license string, and an
sdist that carries what its tests need (helpers and golden data)."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_bsd_2_clause_with_caffes_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 2-Clause License")
    assert "caffepy contributors" in text
    assert "The Regents of the University of California (Regents)" in text
    assert "caffe/proto/caffe.proto" in text  # says which parts the Caffe notice covers
    assert "Redistributions in binary form must reproduce" in text


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    project = _pyproject()
    assert project["project"]["license"] == "BSD-2-Clause"
    assert "LICENSE" in project["project"]["license-files"]
    # PEP 639 license expressions need setuptools >= 77.
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_sdist_carries_test_helpers_and_golden_data(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building needs setuptools >= 77")
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_sdist(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    archive = tmp_path / result.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    golden = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "golden").rglob("*")
              if p.is_file()}
    assert golden and golden <= names, sorted(golden - names)[:5]
    helpers = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
    assert {"tests/conftest.py", "tests/layer_case.py"} <= helpers <= names
    assert {"LICENSE", "README.md", "examples/digits/run.py"} <= names
    assert not any("__pycache__" in name for name in names)
