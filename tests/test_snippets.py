"""Every ```python block of the README and of docs/ runs (each file's blocks in order, in one namespace).

docs/training.md, docs/uses.md, docs/distributed.md and docs/porting_from_pixyz.md are run by their own
tests (test_fit.py, test_examples_uses.py, test_distributed.py, test_pixyz_fixes.py). A chapter whose
blocks are excerpts of an example (they use names the chapter introduces in prose: ``x_batch``, ``q0``,
the M2 model's factors, ...) gets a *prelude* here that defines those names on small data that exists;
the blocks themselves run exactly as written, and where asked a ``print(...)  # text`` line must print
that text. Where a block trains at full size (minutes) or
needs SERKET's data, the test is ``slow`` or skips with the reason (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTED_ELSEWHERE = {"training.md": "test_fit.py", "uses.md": "test_examples_uses.py",
                    "distributed.md": "test_distributed.py", "porting_from_pixyz.md": "test_pixyz_fixes.py"}


def blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, dedented (a block may sit inside a list item)."""
    return [textwrap.dedent(b) for b in re.findall(r"^ *```python\n(.*?)^ *```", path.read_text(), re.S | re.M)]


def expected_prints(block: str) -> list[str]:
    """The text after ``#`` of each ``print(...)  # text`` line (``...`` in it matches anything)."""
    return [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*(.*)$", block, re.M)]


def run_file(path: Path, preludes: dict[int, str] | None = None, replace: dict[str, str] | None = None,
             which: set[int] | None = None, check_prints: bool = False) -> tuple[dict, str]:
    """Exec the blocks of ``path`` in order (all, or those in ``which``; ``preludes[i]`` before block ``i``;
    ``replace`` applied to the blocks); with ``check_prints`` a ``print(...)  # text`` must print ``text``."""
    namespace: dict = {}
    out = io.StringIO()
    threads = torch.get_num_threads()
    try:
        for i, block in enumerate(blocks(path)):
            if which is not None and i not in which:
                continue
            if i in (preludes or {}):
                with contextlib.redirect_stdout(out):
                    exec(compile(preludes[i], f"{path.name} prelude {i}", "exec"), namespace)
            code = block
            for old, new in (replace or {}).items():
                code = code.replace(old, new)
            start = len(out.getvalue())
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{path.name} block {i}", "exec"), namespace)
            printed = out.getvalue()[start:].splitlines()
            for want in expected_prints(block) if check_prints else []:
                pattern = ".*".join(map(re.escape, want.split("...")))
                assert any(re.fullmatch(pattern, line.strip()) for line in printed), (path.name, i, want, printed)
    finally:
        torch.set_num_threads(threads)
    return namespace, out.getvalue()


def test_every_chapter_with_code_is_run_somewhere():
    here = Path(__file__).read_text()
    for path in sorted((ROOT / "docs").glob("*.md")):
        if blocks(path):
            assert path.name in TESTED_ELSEWHERE or f'"{path.name}"' in here, f"no test runs docs/{path.name}"
    assert len(blocks(ROOT / "README.md")) == 2


# ---------------------------------------------------------------------------------------------- README
def test_readme_formula_quickstart_runs_as_written():
    torch.manual_seed(0)
    namespace, _ = run_file(ROOT / "README.md", which={0}, check_prints=True)
    value = namespace["model"].test({"x": namespace["x"]})
    assert value.dim() == 0 and not value.requires_grad and bool(torch.isfinite(value))


def test_readme_integrated_model_runs_on_a_subset():
    """The README's integrated model as written, on the first 200 digits (its figure needs all: slow test)."""
    namespace, out = run_file(ROOT / "README.md", which={1}, replace={"load_demo_data()": "load_demo_data(200)"})
    mlda, gmm = namespace["mlda"], namespace["gmm"]
    assert re.fullmatch(r"\d\.\d{3} \d\.\d{3}", out.strip().splitlines()[-1])
    assert mlda.accuracy > 0.45 and gmm.accuracy > 0.4  # random partitions of 200 digits score about 0.2


@pytest.mark.slow
def test_readme_integrated_model_gives_the_documented_figure():
    """As written (1,797 digits, about a minute on one core): the figures its comment documents."""
    documented = re.search(r"print\(.*\)\s+# (\d\.\d{3} \d\.\d{3})", blocks(ROOT / "README.md")[1]).group(1)
    _, out = run_file(ROOT / "README.md", which={1})
    assert out.strip().splitlines()[-1] == documented


# ---------------------------------------------------------------------------------------------- docs/
def test_performance_notes():
    run_file(ROOT / "docs" / "performance.md")
    assert torch.get_num_threads() >= 1


def test_reliability_chapter():
    """The seeded graph of "Seeds reproduce" runs and leaves torch's global generator as it was (its own
    assert); that it is bitwise the same in two fresh processes is `test_modules_reliability.py`'s."""
    run_file(ROOT / "docs" / "reliability.md")


def test_families_chapter():
    torch.manual_seed(0)
    run_file(ROOT / "docs" / "families.md", check_prints=True)


FLOWS_PRELUDE = '''
import torch
from torch import nn
from kizuna.distributions import Bernoulli, MADEBernoulli, Normal
from kizuna.flows import MAF
from kizuna.losses import ELBO, LogProb
from kizuna.models import Model

flow, x, y = MAF(2, [16]), torch.randn(8, 2), None     # a flow, data and no context
x_batch = torch.randn(64, 2)

class Q0(Normal):                                        # q0(z0|x) for the flow posterior, x one context feature
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q0")
        self.net = nn.Linear(1, 4)
    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": nn.functional.softplus(s) + 1e-3}

class Decoder(Bernoulli):                                # p(x|z)
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(2, 1)
    def forward(self, z):
        return {"logits": self.net(z)}

q0 = Q0()
p_joint = Decoder() * Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
'''


def test_flows_chapter():
    torch.manual_seed(0)
    ns, _ = run_file(ROOT / "docs" / "flows_autoregressive.md", {0: FLOWS_PRELUDE})
    x = (torch.rand(16, 1) > 0.5).float()
    assert torch.isfinite(ns["loss"].eval({"x": x}))
    assert ns["x_new"].shape == (16, 64)


VAE_FAMILY_PRELUDES = {
    0: '''
import torch
from example_loader import load_example
from kizuna.distributions import MLPBernoulli, MLPNormal, Normal
from kizuna.losses import IWAE, KullbackLeibler
from kizuna.metrics import log_likelihood
from kizuna.models import VAE

x_train, x_test = (torch.rand(100, 784) > 0.5).float(), (torch.rand(2, 784) > 0.5).float()
''',
    1: '''
from kizuna.losses import Entropy, LogProb, Prob
from kizuna.losses import Expectation as E
m2 = load_example("m2")                                  # the factors of examples/m2.py, small
d = m2.build(784, 4, 16)
K, alpha = m2.K, 50.0
u = {"x": "x_u", "y": "y_u"}
p_u, p_y_u = d["p"].replace_var(**u), d["p_y"].replace_var(y="y_u")
q_z_u, q_y_u = d["q_z"].replace_var(**u), d["q_y"].replace_var(**u)
q_y = d["q_y"]
neg_elbo = KullbackLeibler(d["q_z"], d["prior"]) - E(d["q_z"], LogProb(d["p"])) - LogProb(d["p_y"])
''',
    3: '''
from kizuna.losses import IterativeLoss
dmm = load_example("dmm")                                # the factors of examples/dmm.py, small
parts = dmm.build({**dmm.SMOKE, "hidden": 8})
rnn, q, transition, emission = parts["rnn"], parts["q"], parts["transition"], parts["emission"]
''',
    4: '''
from kizuna.models import VI
bnn = load_example("bnn")                                # the factors of examples/bnn.py
x, y = bnn.toy_data(20, 0)
lik = bnn.Likelihood(8, bnn.NOISE / y.std().item())
prior = Normal(var=["w"], loc=0.0, scale=1.0, features_shape=[bnn.n_weights(8)], name="p_prior")
q = bnn.MeanField(bnn.n_weights(8))
steps = 5
''',
}


def test_vae_family_chapter():
    torch.manual_seed(0)
    ns, _ = run_file(ROOT / "docs" / "vae_family.md", VAE_FAMILY_PRELUDES)
    assert ns["log_px"].shape == (2,) and bool(torch.isfinite(ns["log_px"]).all())
    assert "E_{p(h|x)}[sum_{t=" in str(ns["loss"])  # the DMM formula: an expectation of a sum over time
    assert len(ns["model"].loss_cls.input_var) > 0


@pytest.mark.slow  # 30 CPU-seconds: MLDA, LDA, GMM+MM and HMM at the chapter's sizes
def test_classical_modules_chapter():
    ns, _ = run_file(ROOT / "docs" / "modules_classical.md", which={0, 1, 2})  # the blocks run as they are, in turn
    assert ns["mlda"].posterior.shape == (300, 3) and np.isfinite(ns["lda"].perplexity(ns["words"][200:]))
    assert ns["mlda"].accuracy > 0.9 and ns["mm"].accuracy > 0.9  # three well-separated classes in both
    assert ns["mm"].transmat_.shape == (3, 3) and ns["states"].shape == (150,) and np.isfinite(ns["logp"])


@pytest.mark.slow
def test_classical_modules_chapter_reproduction_on_serkets_objects(shared_data, monkeypatch):
    """Reproduction script E (hierarchical MLDA on SERKET's objects and motions, 3 seeds)."""
    shared_data("serket/mMLDA")  # it reads ../shared/data/serket/mMLDA/ from the repository root
    monkeypatch.chdir(ROOT)
    _, out = run_file(ROOT / "docs" / "modules_classical.md", which={3})
    assert len(out.strip().splitlines()) == 3


@pytest.mark.slow
def test_modules_chapter_on_the_digits():
    """docs/modules.md's VAE+GMM on scikit-learn's digits and its schedules (200 VAE epochs: minutes); its third
    block is an excerpt of the library's GMM class, shown for its State, not a program."""
    ns, out = run_file(ROOT / "docs" / "modules.md", which={0, 1})
    assert ns["gmm"].accuracy > 0.5 and "gmm" in out


@pytest.mark.slow
def test_serket_examples_chapter(shared_data):
    """docs/serket_examples.md's VAE+GMM+MLDA on SERKET's digits and speech (200 VAE epochs: minutes)."""
    prelude = (f"import numpy as np\nd = np.load({str(shared_data('serket/mnist3000.npz'))!r})\n"
               "images, speech, labels = d['image'], d['modality2'], d['label']\n")
    ns, _ = run_file(ROOT / "docs" / "serket_examples.md", {0: prelude})
    assert ns["mlda"].accuracy > 0.7
