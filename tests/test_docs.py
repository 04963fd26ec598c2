"""The documentation site builds with warnings as errors, and its API reference lists every public name.

Sphinx (docs/conf.py) reads the Markdown chapters of docs/ and generates the API pages from each
subpackage's ``__all__``; a broken cross-reference, a malformed docstring or a chapter left out of the
table of contents is a warning, hence a failure here. The build runs on a copy of docs/ (plus README.md,
which the index includes), so the working tree is left alone.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

import kizuna

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sphinx", reason="the docs build needs the docs extra: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs build needs the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "docs", work / "docs", ignore=shutil.ignore_patterns("api", "__pycache__"))
    shutil.copy(ROOT / "README.md", work / "README.md")
    out = work / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-E",
                          "-d", str(work / "doctrees"), str(work / "docs"), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the docs build failed (warnings are errors):\n{run.stderr[-6000:]}"
    return out


def test_every_public_name_has_an_entry_with_its_signature(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    from _api import public_names

    for sub in kizuna.SUBPACKAGES:
        module = importlib.import_module(f"kizuna.{sub}")
        text = (site / "api" / f"{sub}.html").read_text()
        anchors = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', text))
        # a re-export (kizuna.losses.Loss is kizuna.formula.Loss) links to the entry on its home page
        links = set(re.findall(r'href="(\w+)\.html#(kizuna\.[\w.]+)"', text))
        missing = [name for name in public_names(module) if f"kizuna.{sub}.{name}" not in anchors
                   and not any(target.endswith(f".{name}") for _, target in links)]
        assert not missing, f"kizuna.{sub}: no API entry for {missing}"
    models = (site / "api" / "models.html").read_text()
    # a signature with its parameters, and a method documented under its class
    assert re.search(r'id="kizuna\.models\.Model">.*?<em class="sig-param">.*?loss', models, re.S)
    assert 'id="kizuna.distributions.Distribution.sample_mean"' in (site / "api" / "distributions.html").read_text()


def test_every_chapter_is_a_page_and_the_index_carries_the_readme_install(site: Path) -> None:
    for chapter in (ROOT / "docs").glob("*.md"):
        assert (site / f"{chapter.stem}.html").is_file(), chapter.name
    html = (site / "index.html").read_text()
    index = unescape(re.sub(r"<[^>]+>", "", html))
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest' in index
    assert "download.pytorch.org/whl/cpu" in index and 'href="data.html"' in html
    assert (site / "_images" / "demo.png").is_file()


def test_api_pages_follow_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name added to ``__all__`` gets an entry of its kind without touching any page."""
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    from _api import page

    fake = type(sys)("kizuna.fake")
    fake.__all__ = ["Thing", "helper", "LIMIT"]

    class Thing:
        """A class."""

    def helper() -> None:
        """A function."""

    fake.Thing, fake.helper, fake.LIMIT = Thing, helper, (1, 2)
    text = page(fake)
    assert ".. autoclass:: kizuna.fake.Thing" in text and ".. autofunction:: kizuna.fake.helper" in text
    assert ".. autodata:: kizuna.fake.LIMIT" in text and "``tuple``: (1, 2)" in text
