"""Packaging as users of Pyro and scikit-learn expect: an MIT LICENSE that the metadata declares in the
PEP 639 form, a changelog entry for the version, ``py.typed`` in the wheel, classifiers, one version."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kizuna

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_licence_is_mit_in_the_pep_639_form():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the expression only
    # setuptools reads license-files / a licence expression from 77 on
    (requirement,) = PYPROJECT["build-system"]["requires"]
    low = re.search(r"setuptools>=(\d+)", requirement)
    assert low and int(low.group(1)) >= 77


def test_installed_metadata_agrees():
    meta = importlib.metadata.metadata("kizuna")
    assert meta["Version"] == kizuna.__version__
    assert meta["License-Expression"] == "MIT"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert any(c.startswith("Development Status ::") for c in meta.get_all("Classifier"))


def test_changelog_has_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(kizuna.__version__)}\]", text, re.M)


def test_extras_hold_the_doc_tools_and_torch_2_13_satisfies_every_bound():
    extras = PYPROJECT["project"]["optional-dependencies"]
    docs = {re.split(r"[<>=]", r)[0] for r in extras["docs"]}
    assert docs == {"sphinx", "myst-parser"} and set(extras["docs"]) <= set(extras["test"])
    (torch_req,) = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    from packaging.specifiers import SpecifierSet

    assert "2.13.0" in SpecifierSet(torch_req.removeprefix("torch"))


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_the_wheel_ships_py_typed_and_the_licence(tmp_path):
    """Build a wheel from a copy of the sources (no network, no build isolation) and look inside."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kizuna", src / "kizuna", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", str(src), "-w", str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (wheel,) = (tmp_path / "dist").glob("kizuna-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kizuna/py.typed" in names
    assert f"kizuna-{kizuna.__version__}.dist-info/licenses/LICENSE" in names


def test_the_readmes_install_commands_keep_the_installed_torch(tmp_path):
    """The README's test install as a dry run without an index: pip would install kizuna alone and keep this
    environment's torch (it satisfies the bound, whatever build it is). The demo's install needs a subset."""
    readme = (ROOT / "README.md").read_text()
    demo, test = (shlex.split(c.split("&&")[0]) for c in re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2])
    for install in (demo, test):
        assert install[:4] == ["python3", "-m", "pip", "install"] and not any("torch" in a for a in install)
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert demo[4:] == ["-e", ".[demo]"] and test[4:] == ["-e", ".[test]"]
    assert set(extras["demo"]) <= set(extras["test"])
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pip", "install", *test[4:], "--dry-run", "--no-index",
                          "--no-build-isolation", "-q", "--report", str(report)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]} == {"kizuna"}
