"""Stop 46, the lead's own fixes of the stop-45 "noticed and left" list.

* ``ladder_vae_curves.py`` printed nothing when ``--every`` exceeded ``--epochs`` (a run of 5 epochs with the default
  ``--every 10`` trained and reported nothing); the last epoch is now always measured.
* ``ladder:k_train=2,warmup=5`` (or ``free_nats``) trained the IWAE bound and ignored the warm-up and the floor without
  a word; the combination is refused while parsing.
"""

from __future__ import annotations

import re

import pytest
import torch
from example_loader import load_example
from test_examples_args import usage_error


@pytest.mark.parametrize("setting", ["warmup=5", "free_nats=0.5"])
def test_iwae_training_with_warmup_or_free_nats_is_refused(setting, monkeypatch, capsys):
    spec = f"ladder:k_train=2,{setting}"
    message = usage_error("ladder_vae_curves", ["vae", spec], monkeypatch, capsys)
    assert f"argument models: {spec!r}: warmup and free_nats weigh the ELBO's KL terms; k_train > 1 trains the " \
           "IWAE bound" in message


def test_k_train_alone_and_warmup_alone_still_parse():
    curves = load_example("ladder_vae_curves")
    assert curves.parse_model("ladder:k_train=2")[1]["k_train"] == 2
    assert curves.parse_model("ladder:warmup=5,free_nats=0.5")[1]["warmup"] == 5


@pytest.mark.parametrize(("epochs", "every", "reported"), [(2, 10, [2]), (3, 2, [2, 3]), (4, 2, [2, 4])])
def test_the_last_epoch_is_always_reported(epochs, every, reported, monkeypatch, capsys):
    curves = load_example("ladder_vae_curves")
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 12, generator=g) < 0.4).float()
    monkeypatch.setattr(curves, "binary_images", lambda name, seed=0: (images[:40], None, images[40:], None))
    curves.main(["vae"], epochs=epochs, every=every, k=2, n_eval=10, seed=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "log p(x)" in line]
    assert [int(line.split("epoch")[1].split(":")[0]) for line in lines] == reported


# --- serket_table --merge of a file it cannot use: a usage error naming the file, not a traceback ------------------


def _merge_error(files, monkeypatch, capsys) -> str:
    import runpy
    import sys

    from example_loader import EXAMPLES

    path = EXAMPLES / "serket_table.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--merge", *map(str, files)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    ('{"serket_vae_gmm": [{"ari": 0.5}', "not a --json file of this script (invalid JSON: "),
    ('[1, 2]', "not a --json file of this script (expected {example: [{metric: value}, ...]})"),
    ('{"serket_vae_gmm": 3}', "not a --json file of this script (expected {example: [{metric: value}, ...]})"),
    ('{"serket_bogus": []}', "unknown example 'serket_bogus'"),
    ('{"serket_vae_gmm": [{}]}', "serket_vae_gmm, run 0: no number for 'vae_gmm_accuracy' (got None)"),
    ('{"serket_vae_gmm": [{"vae_gmm_accuracy": NaN}]}', "serket_vae_gmm, run 0: no number for 'vae_gmm_accuracy' (got "
                                                       "nan)"),
    ('{"serket_vae_gmm": ["x"]}', "not a --json file of this script (expected {example: [{metric: value}, ...]})"),
])
def test_merge_of_a_broken_file_names_it(text, message, tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.json"
    good.write_text('{"serket_vae_gmm": []}')
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert f"--merge: {bad}: {message}" in _merge_error([good, bad], monkeypatch, capsys)


def test_merge_of_a_missing_file_or_a_folder_names_it(tmp_path, monkeypatch, capsys):
    assert f"--merge: {tmp_path / 'none.json'}: cannot be read (FileNotFoundError" in \
        _merge_error([tmp_path / "none.json"], monkeypatch, capsys)
    assert f"--merge: {tmp_path}: cannot be read (IsADirectoryError" in _merge_error([tmp_path], monkeypatch, capsys)


# --- Model.dtype: the trained distributions that read the data decide, as the uses' rule --------------------------


def _vae_parts(prior_dtype, net_dtype):
    from torch import nn

    from kizuna.distributions import Normal

    class Enc(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.lin(x)
            return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 0.1}

    class Dec(Normal):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.lin = nn.Linear(2, 4)

        def forward(self, z):
            loc = self.lin(z.to(self.lin.weight.dtype))  # (mixed precision: z comes in the encoder's dtype)
            return {"loc": loc, "scale": torch.ones_like(loc)}

    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=nn.Parameter(torch.zeros(2, dtype=prior_dtype)), scale=1.0, features_shape=[2],
                   name="prior")
    return prior, Enc().to(net_dtype), Dec().to(net_dtype)


def _vae_model(prior, q, p, order):
    from kizuna.losses import Expectation, KullbackLeibler, LogProb
    from kizuna.models import Model

    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    parts = {"prior": prior, "q": q, "p": p}
    return loss, Model(loss, distributions=[parts[k] for k in order])


@pytest.mark.parametrize("order", [["prior", "p", "q"], ["q", "p", "prior"], ["p", "prior", "q"]])
def test_a_float32_prior_listed_first_does_not_round_float64_data(order):
    """The first trainable parameter (the prior's float32 mean) decided: float64 data were converted to float32 and
    the float64 encoder refused them. The readers decide now, whatever the order, as `_dtype` of the uses."""
    from kizuna.metrics.likelihood import _dtype

    prior, q, p = _vae_parts(torch.float32, torch.float64)
    loss, model = _vae_model(prior, q, p, order)
    assert model.dtype == torch.float64 == _dtype(["x"], prior, q, p)
    x = torch.randn(8, 4, dtype=torch.float64)
    torch.manual_seed(1)
    expected = loss.eval({"x": x.float().double()})
    torch.manual_seed(1)
    assert model.train({"x": x.float()}).item() == expected.item()  # float32 data are converted to float64


def test_bf16_networks_beside_a_float32_prior_get_bf16_data():
    prior, q, p = _vae_parts(torch.float32, torch.bfloat16)
    _, model = _vae_model(prior, q, p, ["prior", "q", "p"])
    assert model.dtype == torch.bfloat16
    assert torch.isfinite(model.train({"x": torch.randn(8, 4)}))


def test_a_later_double_of_the_networks_is_followed_and_one_dtype_is_as_before():
    prior, q, p = _vae_parts(torch.float32, torch.float32)
    _, model = _vae_model(prior, q, p, ["prior", "q", "p"])
    assert model.dtype == torch.float32
    q.double()
    p.double()
    assert model.dtype == torch.float64
    assert model.train({"x": torch.randn(8, 4)}).dtype == torch.float64


def test_observation_reads_a_1d_array_as_a_column_as_documented():
    """docs/modules.md said `Observation` refuses data that is not N×D; a 1-D array is read as N×1 (documented now)."""
    import numpy as np

    from kizuna.modules import Observation

    obs = Observation(np.arange(3.0))
    assert tuple(obs.data.shape) == (3, 1) and obs.data[:, 0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="data"):
        Observation(np.zeros((2, 2, 2)))


def test_float32_tied_hmm_with_a_state_without_mass_fits_as_float64():
    """Review R6 (stop 46): the M step divided by ``nk.clamp_min(1e-300)``, 0 in float32, so a state no step visits
    gave 0 / 0 = NaN, which the tied covariance's weighted sum over the states spread: the float32 fit failed naming
    the user's ``covars_`` where the float64 fit ran. Float32 now matches the float64 fit."""
    import numpy as np

    from kizuna.modules.hmm import HMM

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (50, 2)), rng.normal(10, 1, (50, 2))])
    means = np.array([[0.0, 0.0], [10.0, 10.0], [1000.0, 1000.0]])  # the third state far from every point
    fitted = {}
    for dtype in (np.float64, np.float32):
        m = HMM(3, covariance_type="tied", n_iter=5, init_params="st", random_state=0)
        m.means_, m.covars_ = means.astype(dtype), np.eye(2, dtype=dtype)
        m.fit(x.astype(dtype))
        fitted[dtype] = (m.score(x.astype(dtype)), np.asarray(m.covars_, dtype=np.float64))
    assert np.isfinite(fitted[np.float32][1]).all()
    assert fitted[np.float32][0] == pytest.approx(fitted[np.float64][0], rel=1e-6)
    np.testing.assert_allclose(fitted[np.float32][1], fitted[np.float64][1], rtol=1e-4, atol=1e-5)


def test_model_save_under_a_file_names_the_file(tmp_path):
    """Review R2 (stop 46): `Model.save` under a path whose folder is blocked by a file gave the raw
    ``NotADirectoryError: [Errno 20]``; `save_module` and a graph's save named the file in the way. One helper now
    (`kizuna._io.make_folder`), for ``fit(checkpoint=...)`` too."""
    from kizuna.distributions import Normal
    from kizuna.losses import LogProb
    from kizuna.models import Model

    p = Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(1)), scale=1.0, features_shape=[1])
    model = Model(-LogProb(p).mean(), distributions=[p])
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    target = blocker / "sub" / "model.pt"
    with pytest.raises(FileNotFoundError, match=rf"^save: cannot write the checkpoint {target}: the folder "
                                                rf"{target.parent} cannot be created \({blocker} is a file\)$"):
        model.save(target)
    with pytest.raises(FileNotFoundError, match=rf"^fit: cannot write the checkpoint {target}: the folder "
                                                rf"{target.parent} cannot be created \({blocker} is a file\)$"):
        model.fit({"x": torch.zeros(4, 1)}, checkpoint=target, quiet=True)
    assert blocker.read_text() == "mine"


def test_the_markov_rows_say_that_the_order_is_the_label(shared_data):
    """Review R7 (stop 46): in SERKET's files the order is the label (``mnist3000.npz``: label = position mod 10; the
    HMM data: a 4-cycle), so the MM rows of the table measure how much of a known periodic order the graph adopts. The
    pages said "a Markov model over the classes helps most" without it; they say it now, and this test keeps the
    sentence tied to the data."""
    from pathlib import Path

    import numpy as np

    digits = np.load(shared_data("serket/mnist3000.npz"))["label"]
    assert (digits == np.arange(len(digits)) % 10).all()
    hmm = np.loadtxt(shared_data("serket/HMM/correct.txt"))
    assert (hmm == np.arange(len(hmm)) % 4).all()
    root = Path(__file__).resolve().parents[1]
    assert "label = position mod 10" in (root / "docs" / "serket_examples.md").read_text()
    assert "label = position mod 10" in " ".join((root / "README.md").read_text().split())


@pytest.mark.parametrize(("net_dtype", "coef_dtype"), [(torch.bfloat16, torch.float32), (torch.float32, torch.float64)])
def test_a_module_holding_no_distribution_does_not_decide_the_dtype(net_dtype, coef_dtype):
    """Diff review 1 (stop 46): a learned loss coefficient passed Pixyz-style among the distributions decided the
    data's dtype with the first version of the readers' rule (its networks then refused the data); it reads no data."""
    from torch import nn

    from kizuna.losses import Expectation, KullbackLeibler, LogProb
    from kizuna.models import Model

    prior, q, p = _vae_parts(net_dtype, net_dtype)
    coef = nn.Module()
    coef.log_beta = nn.Parameter(torch.zeros((), dtype=coef_dtype))

    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    model = Model(loss, distributions=[coef, q, p])
    assert model.dtype == net_dtype
    assert torch.isfinite(model.train({"x": torch.randn(8, 4)}))


def test_a_frozen_reader_does_not_decide_the_dtype():
    """Diff review 1 (stop 46): a factor reading x with only a frozen float64 parameter made the data float64 for the
    float32 networks (docs/training.md: frozen float64 constants do not change the dtype)."""
    from torch import nn

    from kizuna.distributions import Normal
    from kizuna.losses import Expectation, KullbackLeibler, LogProb
    from kizuna.models import Model

    prior, q, p = _vae_parts(torch.float32, torch.float32)
    frozen = Normal(var=["x"], loc=nn.Parameter(torch.zeros(4, dtype=torch.float64), requires_grad=False), scale=1.0,
                    features_shape=[4], name="r")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p)) - LogProb(frozen)).mean()
    model = Model(loss, distributions=[frozen, q, p, prior])
    assert model.dtype == torch.float32
    assert torch.isfinite(model.train({"x": torch.randn(8, 4)}))


def test_a_ladder_vae_module_is_read_inside():
    """A `LadderVAE` (a module holding its distributions) is looked into: its factors that read x decide."""
    from kizuna.models import LadderVAE, Model

    torch.manual_seed(0)
    m = LadderVAE(6, [3, 2], [8, 4]).double()
    model = Model(m.loss(1.0).mean(), distributions=[m])
    assert model.dtype == torch.float64
    assert torch.isfinite(model.train({"x": (torch.rand(5, 6) < 0.5).float()}))


def test_merge_without_runs_names_the_files(tmp_path, monkeypatch, capsys):
    """Diff review 1 (stop 46): a file with an empty run list gave "fmean requires at least one data point"."""
    empty = tmp_path / "empty.json"
    empty.write_text('{"serket_vae_gmm": []}')
    assert f"--merge: no runs of serket_vae_gmm in {empty}" in _merge_error([empty], monkeypatch, capsys)


# --- Pixyz checkpoints of relaxed families: the default temperature buffer (review R8) ----------------------------


def _relaxed_networks():
    from torch import nn
    from torch.nn import functional as F

    from kizuna.distributions import RelaxedBernoulli, RelaxedCategorical

    class Classifier(RelaxedCategorical):  # M2's classifier, as Pixyz's notebook writes it
        def __init__(self):
            super().__init__(var=["y"], cond_var=["x"], name="p")
            self.fc1 = nn.Linear(4, 3)

        def forward(self, x):
            return {"probs": F.softmax(self.fc1(x), dim=1)}

    class Bits(RelaxedBernoulli):
        def __init__(self):
            super().__init__(var=["b"], cond_var=["x"], name="r")
            self.fc1 = nn.Linear(4, 3)

        def forward(self, x):
            return {"probs": torch.sigmoid(self.fc1(x))}

    return Classifier(), Bits()


def test_a_pixyz_checkpoint_of_relaxed_networks_loads(tmp_path):
    """Pixyz keeps the default temperature as a buffer ``temperature`` (tensor([0.1])); kizuna has no state for it, so
    a strict load and `Model.load` of Pixyz's ``Model.save`` file failed with "Unexpected key(s) ... temperature"."""
    from kizuna.losses import LogProb
    from kizuna.models import Model

    torch.manual_seed(0)
    f, r = _relaxed_networks()
    pixyz_state = {**{f"0.{k}": v for k, v in f.state_dict().items()}, "0.temperature": torch.tensor([0.1]),
                   **{f"1.{k}": v for k, v in r.state_dict().items()}, "1.temperature": torch.tensor([0.1])}
    torch.save({"distributions": pixyz_state}, tmp_path / "pixyz.pt")  # Pixyz's Model.save writes this dict
    torch.manual_seed(1)
    g, s = _relaxed_networks()
    loaded = g.load_state_dict({**f.state_dict(), "temperature": torch.tensor([0.1], dtype=torch.float64)})
    assert loaded.unexpected_keys == []
    assert torch.equal(g.fc1.weight, f.fc1.weight)
    torch.manual_seed(2)
    g, s = _relaxed_networks()
    with pytest.warns(UserWarning, match="is a Pixyz Model.save file: its weights were loaded"):
        Model(-LogProb(g).mean(), distributions=[g, s]).load(tmp_path / "pixyz.pt")
    assert torch.equal(g.fc1.weight, f.fc1.weight) and torch.equal(s.fc1.bias, r.fc1.bias)


def test_another_pixyz_temperature_is_an_error_naming_it():
    f, _ = _relaxed_networks()
    state = {**f.state_dict(), "temperature": torch.tensor([0.5])}
    for strict in (True, False):
        message = ("temperature: the state's Pixyz Classifier temperature is 0.5, this distribution's default "
                   "temperature is 0.1: give it as the temperature when building the distribution "
                   "(RelaxedCategorical(..., temperature=0.5), or super().__init__(..., temperature=...) in a "
                   "subclass) to load it")
        with pytest.raises(RuntimeError, match=re.escape(message)):
            f.load_state_dict(state, strict=strict)


# --- MixtureOfNormal number weights in a wider dtype (diff review 3): a device-side choice, no stale cache ---------


def _mixture():
    from kizuna.distributions import MixtureOfNormal, Normal

    e1 = Normal(var=["z"], cond_var=["a"], loc="a", scale=1.0)
    e2 = Normal(var=["z"], cond_var=["b"], loc="b", scale=1.0)
    return MixtureOfNormal([e1, e2], weights=[0.3, 0.7])


def _inputs(dtype):
    return {"a": torch.zeros(2, 1, dtype=dtype), "b": torch.ones(2, 1, dtype=dtype)}


def test_weights_made_learnable_after_construction_keep_their_gradient_in_float64():
    """The exact numbers replaced the weights in float64 even after they were made an ``nn.Parameter``: no gradient."""
    from torch import nn

    m = _mixture()
    m.weights = nn.Parameter(torch.tensor([0.3, 0.7]))
    grads = {}
    for dtype in (torch.float32, torch.float64):
        m.weights.grad = None
        m.sample_mean(_inputs(dtype)).sum().backward()
        grads[dtype] = m.weights.grad.tolist()
    assert grads[torch.float64] == pytest.approx([-1.4, 0.6], abs=1e-6) == grads[torch.float32]


def test_an_in_place_write_to_number_weights_is_seen_in_float64():
    m = _mixture()
    assert m.sample_mean(_inputs(torch.float64))[0, 0].item() == 0.7  # the exact numbers
    m.weights.data.copy_(torch.tensor([0.25, 0.75]))
    assert m.sample_mean(_inputs(torch.float64))[0, 0].item() == pytest.approx(0.75, abs=1e-12)
    with torch.inference_mode():
        assert m.sample_mean(_inputs(torch.float64))[0, 0].item() == pytest.approx(0.75, abs=1e-12)


def test_torch_func_over_number_weights():
    """``torch.func.grad`` and ``vmap`` over the weights crashed (a host read of a traced tensor) with the cached
    exact weights; the gradient equals autograd's of the same weights as a Parameter."""
    from torch import nn
    from torch.func import functional_call, grad, vmap

    m = _mixture()
    x = {**_inputs(torch.float64), "z": torch.full((2, 1), 0.2, dtype=torch.float64)}

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, values):
            return self.m.get_log_prob(values).sum()

    wrap, w0 = Wrap(), torch.tensor([0.3, 0.7])
    got = grad(lambda w: functional_call(wrap, {"m.weights": w}, (x,)))(w0)
    learnable = _mixture()
    learnable.weights = nn.Parameter(w0.clone())
    learnable.get_log_prob(x).sum().backward()
    torch.testing.assert_close(got, learnable.weights.grad)
    both = vmap(lambda w: functional_call(wrap, {"m.weights": w}, (x,)))(torch.stack([w0, torch.tensor([0.25, 0.75])]))
    assert both.shape == (2,) and torch.isfinite(both).all()


def test_a_relaxed_subclass_with_its_own_temperature_loads_its_checkpoint():
    """Diff review 4 (stop 46): a subclass keeping its own ``temperature`` buffer (returned from ``forward``) could no
    longer load its own checkpoint: the Pixyz hook took the key for Pixyz's default."""
    from torch import nn
    from torch.nn import functional as F

    from kizuna.distributions import RelaxedCategorical

    class Own(RelaxedCategorical):
        def __init__(self):
            super().__init__(var=["y"], cond_var=["x"], name="p")
            self.fc1 = nn.Linear(4, 3)
            self.register_buffer("temperature", torch.tensor(0.3))

        def forward(self, x):
            return {"probs": F.softmax(self.fc1(x), dim=1), "temperature": self.temperature}

    a, b = Own(), Own()
    a.temperature.fill_(0.7)
    assert b.load_state_dict(a.state_dict()).missing_keys == []
    assert b.temperature.item() == pytest.approx(0.7)


@pytest.mark.parametrize(("enc", "dec"), [(torch.bfloat16, torch.float32), (torch.float32, torch.float64)])
def test_the_encoder_decides_over_a_wider_decoder(enc, dec):
    """Diff review 4 (stop 46): the widest of all readers fed a bf16 (float32) encoder the float32 (float64) decoder's
    dtype, which the encoder refused (it trained before this stop in the order [q, p]). The factors that take the data
    as a network input decide first, in `Model.dtype` and in the uses' rule alike."""
    from kizuna.metrics.likelihood import _dtype

    prior, q, p = _vae_parts(enc, enc)
    p.to(dec)
    for order in (["q", "p", "prior"], ["p", "q", "prior"]):
        _, model = _vae_model(prior, q, p, order)
        assert model.dtype == enc == _dtype(["x"], prior, q, p) == _dtype(["x"], p * prior, q)
        assert torch.isfinite(model.train({"x": torch.randn(8, 4, dtype=dec)}))
