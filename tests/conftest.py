"""Fixtures and markers shared by the test modules.

Data beside the project. A few tests read data that kizuna cannot ship: SERKET's example data (no licence
to redistribute) and the Brent corpus, expected under ``../shared/data/`` (the folder beside the
repository). Every such test goes through this file, so that on a clone without that folder it is
*skipped with a reason* saying what is missing and where it comes from, never an error:

* ``@pytest.mark.shared_data("serket/mnist3000.npz", ...)`` on a test or a module (``pytestmark``): skipped
  unless every listed path exists;
* the ``shared_data`` fixture, a function ``shared_data("serket/HMM") -> Path`` that skips the calling
  test when the path is absent (usable from module-scoped fixtures too).

``KIZUNA_NO_SHARED_DATA=1`` makes the tests behave as on a clone without ``../shared`` (the suite checks
itself that way in ``tests/test_shared_data.py``). Where the data come from: ``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "serket": "SERKET's example data, not redistributable; get them from naka-lab/Serket's examples/ "
              "and point --data at them (docs/data.md)",
    "brent": "the Brent corpus (br-phono.txt, from kamperh/dpdp_aernn data/; docs/data.md)",
}


def shared_data_path(relative: str) -> Path | None:
    """``../shared/data/<relative>`` if it exists (and ``KIZUNA_NO_SHARED_DATA`` is not set), else None."""
    if os.environ.get("KIZUNA_NO_SHARED_DATA"):
        return None
    path = SHARED_DATA / relative
    return path if path.exists() else None


def shared_data_reason(relative: str) -> str:
    """The skip reason of a test that needs ``../shared/data/<relative>``: what is missing, where it comes from."""
    source = SOURCES.get(relative.split("/")[0], "see docs/data.md")
    return f"needs ../shared/data/{relative}: {source}"


def shared_data_or_skip(relative: str) -> Path:
    """``../shared/data/<relative>``; skips the calling test (with `shared_data_reason`) when it is absent."""
    path = shared_data_path(relative)
    if path is None:
        pytest.skip(shared_data_reason(relative))
    return path


@pytest.fixture(autouse=True)
def _same_random_start() -> None:
    """Every test starts from the same global random state: torch's generator, numpy's legacy one and python's
    ``random``. torch seeds its generator from the operating system in every process, and a test that draws from it
    without seeding (e.g. a module's ``update()`` without ``random_state``) saw whatever the tests before it left:
    one failed only after another that had called ``torch.manual_seed(0)``. A test that needs other numbers seeds
    them itself."""
    torch.manual_seed(20261206)
    np.random.seed(20261206)
    random.seed(20261206)


@pytest.fixture(autouse=True)
def _default_validation() -> None:
    """Every test starts with torch.distributions' default validation (on, as in any process run without ``-O``):
    ``torch.compile`` switches it off for the whole process on first use, so every test after the first compiled one
    ran unchecked, and one that relied on a check passed or failed by the order of the files
    (tests/test_s45_pixyz_api.py's batch-size check failed after tests/test_s48_memo_cost.py)."""
    torch.distributions.Distribution.set_default_validate_args(__debug__)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """``torch._dynamo.reset()`` before and after the test (no compiled code or guard kept from another test), and
    torch.distributions' default validation put back after it (``torch.compile`` switches it off process-wide). Used
    by the compile tests (``pytest.mark.usefixtures("fresh_dynamo")``)."""
    torch._dynamo.reset()
    checks = torch.distributions.Distribution._validate_args
    yield
    torch.distributions.Distribution.set_default_validate_args(checks)
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """``shared_data("serket/HMM")``: the path under ``../shared/data``, or a skip with the reason."""
    return shared_data_or_skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared_data(*paths): needs these paths under ../shared/data "
                                       "(skipped with a reason when absent)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("shared_data"):
            missing = [p for p in mark.args if shared_data_path(p) is None]
            if missing:
                item.add_marker(pytest.mark.skip(reason=shared_data_reason(missing[0])))
                break


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one torch thread, as the figures the module tests assert were measured;
    the thread count is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_objects(*modules: torch.nn.Module) -> Iterator[None]:
    """Within this block the kizuna distributions inside ``modules`` compute with ``torch.distributions`` objects
    instead of their families' closed-form kernels (log-density, draw, KL): the independent reference that the
    kernels are compared with (validation is not one: it only adds checks). Import it with
    ``from conftest import torch_objects``."""
    from kizuna.distributions.torch_dist import TorchDistribution

    changed = []
    for module in modules:
        for d in module.modules():
            if isinstance(d, TorchDistribution) and "_hooks" not in d.__dict__:
                d.__dict__["_hooks"] = dict.fromkeys(type(d)._hooks, False)
                changed.append(d)
    try:
        yield
    finally:
        for d in changed:
            del d.__dict__["_hooks"]
