"""Tests that need data beside the project (``../shared/data``) skip with a reason when it is absent.

kizuna cannot ship SERKET's example data (no licence to redistribute) or the Brent corpus, so a clone
without ``../shared`` must still pass the README's test command: every test that reads such data goes
through tests/conftest.py (the ``shared_data`` fixture or marker) and is skipped, saying what is missing
and where it comes from. Checked two ways: statically (no test builds a path to ``../shared`` itself) and
by running every such test in a child pytest that sees no ``../shared`` (``KIZUNA_NO_SHARED_DATA=1``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, SOURCES, shared_data_or_skip, shared_data_reason

TESTS = Path(__file__).resolve().parent
# what a test reading data beside the project would mention
DATA_WORDS = re.compile(r"mnist3000|serket/|br-phono|brent/|shared/data|parents\[2\]")
NOT_READERS = {"test_prepare_serket_data.py": "builds a miniature SERKET checkout in a temporary folder",
               "test_examples_args.py": "gives the examples data paths in a temporary folder that do not exist"}
ONLY_SHARED = '''
def pytest_collection_modifyitems(config, items):
    keep = [i for i in items if "shared_data" in getattr(i, "fixturenames", ()) or i.get_closest_marker("shared_data")]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep
'''


def _users() -> list[Path]:
    """Test files that use the shared-data helper."""
    return sorted(p for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name
                  and re.search(r"\bshared_data\b", p.read_text()))


def test_the_reason_says_what_is_missing_and_where_it_comes_from():
    reason = shared_data_reason("serket/mnist3000.npz")
    assert reason.startswith("needs ../shared/data/serket/mnist3000.npz: SERKET's example data")
    assert "not redistributable" in reason and "naka-lab/Serket" in reason and "--data" in reason
    assert "kamperh/dpdp_aernn" in shared_data_reason("brent/br-phono.txt")
    with pytest.raises(pytest.skip.Exception, match=r"needs ../shared/data/serket/no-such-file: SERKET"):
        shared_data_or_skip("serket/no-such-file")


def test_every_test_reading_shared_data_goes_through_the_helper():
    """A test file that mentions SERKET's or Brent's files uses the helper, and none builds its own path."""
    users = {p.name for p in _users()}
    for path in TESTS.glob("*.py"):
        if path.name in ("conftest.py", Path(__file__).name) or path.name in NOT_READERS:
            continue
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert "parents[2]" not in code, f"{path.name} builds a path outside the project: use tests/conftest.py"
        if DATA_WORDS.search(code.replace('"""', "")) and "example_loader" != path.stem:
            assert path.name in users, f"{path.name} mentions shared data without the shared_data helper"
    assert {"test_hmm.py", "test_multimodal.py", "test_vae_module.py", "test_examples_serket.py"} <= users


def test_on_a_clone_without_shared_every_such_test_is_skipped_with_its_reason(tmp_path):
    """A child pytest that sees no ../shared runs only the tests that use the helper (slow ones included):
    all skip, none errs."""
    (tmp_path / "only_shared_data_tests.py").write_text(ONLY_SHARED)
    env = {**os.environ, "KIZUNA_NO_SHARED_DATA": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    files = [str(p) for p in _users()]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "", "-p", "no:cacheprovider",
                          "-p", "only_shared_data_tests", "-W", "ignore::pytest.PytestAssertRewriteWarning",
                          *files], cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    summary = out.strip().splitlines()[-1]
    assert run.returncode == 0, out
    assert re.fullmatch(r"=* ?\d+ skipped, \d+ deselected in [\d.]+s ?=*", summary), summary
    reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", out, re.M)
    assert reasons and all(r.startswith("needs ../shared/data/") and any(src in r for src in SOURCES.values())
                           for r in reasons)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="this clone has no ../shared: the skips above are what runs")
def test_with_shared_present_the_helper_returns_the_path():
    assert shared_data_or_skip("serket") == SHARED_DATA / "serket"
