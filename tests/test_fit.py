"""`Model.fit`: batching, history, validation, early stopping, progress bar, bad input, NaN handling.

References: closed-form Gaussian log-densities (the epoch means of a model that does not move),
hand-written `train` steps (what fit must reproduce bitwise), and the data itself.
Also `kizuna.metrics.log_likelihood` / `bits_per_dim` on DataLoaders (they share fit's data forms).
"""

import contextlib
import math
import sys

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype
from test_bounds import ExactPosterior, WrongPosterior, log_px
from test_bounds import model as linear_gaussian
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kizuna.distributions import CustomProb, Normal
from kizuna.losses import LogProb, Parameter
from kizuna.metrics import bits_per_dim, log_likelihood
from kizuna.models import Model
from kizuna.models.batches import Batches

LOG_2PI = math.log(2 * math.pi)


def _normal(var="x", dim=1, name="p"):
    return Normal(var=[var], loc=nn.Parameter(torch.zeros(dim, dtype=torch.float64)),
                  scale=nn.Parameter(torch.ones(dim, dtype=torch.float64)), name=name)


def _two_terms(lr=0.05, optimizer=torch.optim.Adam):
    p, r = _normal("x", name="p"), _normal("y", name="r")
    return Model(-LogProb(p).mean() - LogProb(r).mean(), optimizer=optimizer, optimizer_params={"lr": lr}), p, r


def _data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 1, generator=g, dtype=torch.float64),
            "y": 2 + torch.randn(n, 1, generator=g, dtype=torch.float64)}


class DictDataset(Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(next(iter(self.data.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


def test_epoch_means_weight_uneven_batches_and_match_the_closed_form():
    model, p, r = _two_terms(lr=0.0, optimizer=torch.optim.SGD)  # lr 0: the model stays N(0, 1)
    data = _data(10)
    history = model.fit(data, epochs=2, batch_size=3, quiet=True, seed=0)  # batches of 3, 3, 3, 1
    log_x = (-0.5 * (data["x"] ** 2 + LOG_2PI)).mean().item()
    log_y = (-0.5 * (data["y"] ** 2 + LOG_2PI)).mean().item()
    assert history["epoch"] == [1, 2] and model.epoch == 2
    assert history["train"] == pytest.approx([-log_x - log_y] * 2, abs=1e-12)
    assert list(history.terms) == ["log p(x)", "log r(y)"]
    assert history["log p(x)"] == pytest.approx([log_x] * 2, abs=1e-12)
    assert history["log r(y)"] == pytest.approx([log_y] * 2, abs=1e-12)
    assert all(math.isnan(v) for v in history["valid"]) and history.valid_terms == {}


def test_fit_takes_the_steps_train_would_take():
    data = _data(10)
    fitted, p1, _ = _two_terms()
    fitted.fit(data, epochs=2, batch_size=4, shuffle=False, quiet=True)
    manual, p2, _ = _two_terms()
    for _ in range(2):
        for start in (0, 4, 8):
            manual.train({k: v[start:start + 4] for k, v in data.items()})
    for a, b in zip(fitted.distributions.parameters(), manual.distributions.parameters()):
        assert torch.equal(a, b)


def test_shuffling_visits_every_row_once_per_epoch_in_a_seeded_order():
    rows = {"x": torch.arange(10.0)[:, None]}
    batches = Batches(rows, "data", ["x"], batch_size=4)
    gen = torch.Generator().manual_seed(3)
    cpu, f32 = torch.device("cpu"), torch.float32
    epochs = [torch.cat([b.values["x"] for b in batches.iterate(gen, f32, cpu)]).flatten() for _ in range(2)]
    assert [b.n for b in batches.iterate(gen, f32, cpu)] == [4, 4, 2]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    again = torch.cat([b.values["x"] for b in batches.iterate(torch.Generator().manual_seed(3), f32, cpu)])
    assert torch.equal(again.flatten(), epochs[0])


def test_a_dataloader_of_dicts_gives_the_same_run_as_the_dict():
    data = _data(10)
    by_dict, _, _ = _two_terms()
    h1 = by_dict.fit(data, epochs=3, batch_size=4, shuffle=False, valid=data, quiet=True)
    by_loader, _, _ = _two_terms()
    loader = DataLoader(DictDataset(data), batch_size=4)
    h2 = by_loader.fit(loader, epochs=3, valid=loader, quiet=True)
    assert h1 == h2
    for a, b in zip(by_dict.distributions.parameters(), by_loader.distributions.parameters()):
        assert torch.equal(a, b)


def test_valid_loss_is_the_test_loss_after_each_epoch():
    model, _, _ = _two_terms()
    data, valid = _data(20, seed=0), _data(7, seed=1)
    history = model.fit(data, epochs=3, batch_size=8, valid=valid, quiet=True, seed=0)
    assert history["valid"][-1] == pytest.approx(model.test(valid).item(), abs=1e-12)
    assert set(history.valid_terms) == {"log p(x)", "log r(y)"}
    assert history.best_epoch == 1 + min(range(3), key=history["valid"].__getitem__)


def test_early_stopping_restores_the_best_epoch():
    def run(epochs, patience):
        model = Model(-LogProb(p := _normal()).mean(), optimizer_params={"lr": 0.3})
        train = {"x": torch.full((8, 1), 3.0, dtype=torch.float64)}
        valid = {"x": torch.full((4, 1), -1.0, dtype=torch.float64)}  # training moves away from it
        return model, p, model.fit(train, epochs=epochs, batch_size=8, valid=valid, patience=patience, quiet=True)

    model, p, history = run(10, patience=2)
    assert history.best_epoch == 1 and history.stopped_epoch == 3 and len(history) == 3
    assert history["valid"][1] > history["valid"][0] and history["valid"][2] > history["valid"][0]
    _, p_best, _ = run(1, patience=None)
    assert torch.equal(p.loc, p_best.loc) and torch.equal(p.scale, p_best.scale)


def test_progress_bar_shows_unless_quiet(capsys, monkeypatch):
    model, _, _ = _two_terms()
    model.fit(_data(), epochs=2, quiet=False)
    assert "fit" in capsys.readouterr().err
    model.fit(_data(), epochs=2, quiet=True)
    model.fit(_data(), epochs=2)  # quiet=None: stderr is captured here, not a terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    model.fit(_data(), epochs=2, valid=_data(4, 1))  # quiet=None on a terminal: the bar shows, with the losses
    err = capsys.readouterr().err
    assert "2/2" in err and "train=" in err and "valid=" in err


def test_numpy_arrays_constants_and_lists_of_batches_are_data():
    p = _normal()
    model = Model(-LogProb(p).mean() * Parameter("beta"), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.0})
    x = np.linspace(-1, 1, 6)[:, None]
    history = model.fit({"x": x, "beta": 2.0}, batch_size=4, quiet=True)  # beta goes to every batch
    assert history["train"][0] == pytest.approx(2 * 0.5 * np.mean(x**2 + LOG_2PI), abs=1e-12)
    batches = [{"x": torch.as_tensor(x[:3]), "beta": 2.0}, {"x": torch.as_tensor(x[3:]), "beta": 2.0}]
    assert model.fit(batches, quiet=True)["train"][0] == pytest.approx(history["train"][0], abs=1e-12)
    with pytest.raises(ValueError, match="needs beta in data, but it has x"):
        model.fit([{"x": torch.as_tensor(x)}])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_batches_move_to_the_parameters_device(device):
    model, p, _ = _two_terms()
    model.distributions.to(device)
    history = model.fit(_data(), epochs=1, valid=_data(5, 1), quiet=True)  # CPU data
    assert p.loc.device.type == device and math.isfinite(history["valid"][0])


# --------------------------------------------------------------- bad input
def test_bad_data_is_named():
    model, _, _ = _two_terms()
    x = torch.zeros(10, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"share their first \(batch\) dimension, got x: 10, y: 9"):
        model.fit({"x": x, "y": x[:9]})
    with pytest.raises(ValueError, match="needs y in data, but it has x, z"):
        model.fit({"x": x, "z": x})
    with pytest.raises(ValueError, match="needs y in valid, but it has x"):
        model.fit({"x": x, "y": x}, valid={"x": x})
    with pytest.raises(TypeError, match="bare Tensor; kizuna needs variable names"):
        model.fit(x)
    with pytest.raises(ValueError, match="no rows"):
        model.fit({"x": x[:0], "y": x[:0]})
    with pytest.raises(ValueError, match="patience"):
        model.fit({"x": x, "y": x}, patience=2)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        model.fit({"x": x, "y": x}, epochs=-1)


def test_missing_names_are_found_before_any_step():
    model, p, _ = _two_terms()
    before = p.loc.detach().clone()
    loader = DataLoader(DictDataset({"x": torch.ones(6, 1, dtype=torch.float64)}), batch_size=2)
    with pytest.raises(ValueError, match="needs y in data, but it has x"):
        model.fit(loader)
    assert torch.equal(p.loc, before) and model.epoch == 0


def test_loaders_of_tuples_ask_for_names():
    model, _, _ = _two_terms()
    x = torch.zeros(6, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"yields tuple \(its first item\); kizuna needs variable names: .*dicts"):
        model.fit(DataLoader(TensorDataset(x, x), batch_size=2))
    custom = DataLoader(TensorDataset(x, x), batch_size=2, collate_fn=lambda items: [i[0] for i in items])
    with pytest.raises(TypeError, match=r"yields list \(batch 1\); kizuna needs variable names"):
        model.fit(custom)
    named = DataLoader(TensorDataset(x, x), batch_size=2,
                       collate_fn=lambda items: {"x": torch.stack([i[0] for i in items]),
                                                 "y": torch.stack([i[1] for i in items])})
    assert len(model.fit(named, quiet=True)) == 1  # a collate that builds dicts is fine


# ---------------------------------------------------------- non-finite values
class EpochBatches:
    """Re-iterable batches; from epoch ``bad_epoch`` on, batch ``bad_step`` holds an overflowing y."""

    def __init__(self, data, bad_epoch, bad_step, size=4):
        self.data, self.bad_epoch, self.bad_step, self.size, self.passes = data, bad_epoch, bad_step, size, 0

    def batch(self, step, epoch):
        b = {k: v[(step - 1) * self.size: step * self.size].clone() for k, v in self.data.items()}
        if epoch >= self.bad_epoch and step == self.bad_step:
            b["y"][0] = 1e300  # (y - loc)^2 overflows to inf in float64
        return b

    def __iter__(self):
        self.passes += 1
        steps = len(self.data["x"]) // self.size
        return iter([self.batch(s, self.passes) for s in range(1, steps + 1)])


def test_a_non_finite_loss_names_its_term_and_keeps_the_last_good_state(tmp_path):
    data = _data(16)
    path = tmp_path / "run.pt"
    model, p, r = _two_terms()
    batches = EpochBatches(data, bad_epoch=2, bad_step=3)
    model.fit(batches, epochs=1, quiet=True, checkpoint=path)
    saved = path.read_bytes()
    with pytest.raises(FloatingPointError) as err:
        model.fit(batches, epochs=3, quiet=True, checkpoint=path)
    message = str(err.value)
    assert "epoch 2, step 3" in message and "log r(y) = -inf" in message and "log p(x)" not in message
    assert f"checkpoint {path} (epoch 1) is untouched" in message
    assert path.read_bytes() == saved and model.epoch == 1
    # the parameters are those after the last finite step: epoch 1, then steps 1-2 of epoch 2
    reference, *_ = _two_terms()
    for epoch, steps in ((1, 4), (2, 2)):
        for step in range(1, steps + 1):
            reference.train(batches.batch(step, epoch))
    for a, b in zip(model.distributions.parameters(), reference.distributions.parameters()):
        assert torch.equal(a, b) and bool(torch.isfinite(a).all())


def test_a_non_finite_gradient_names_the_parameter_and_skips_the_step():
    class Root(nn.Module):  # log p(x) = -sqrt|x - a|: finite at x = a, gradient 0/0
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def forward(self, x):
            return -(x - self.a).abs().sqrt()

    p = CustomProb(Root(), var=["x"], name="p")
    model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1})
    with pytest.raises(FloatingPointError, match=r"gradient of p\(x\)\.log_prob_function\.a is non-finite at epoch 1, "
                                                 r"step 1; the loss -?0 is finite"):
        model.fit({"x": torch.zeros(4, 1, dtype=torch.float64)}, quiet=True)
    assert p.log_prob_function.a.item() == 0.0


def test_a_non_finite_validation_loss_is_named():
    model, _, _ = _two_terms()
    valid = _data(4)
    valid["x"][0] = 1e300
    with pytest.raises(FloatingPointError, match=r"validation loss is inf at epoch 1, validation batch 1; "
                                                 r"non-finite terms: log p\(x\) = -inf"):
        model.fit(_data(), valid=valid, quiet=True)


# ------------------------------------------------- log-likelihood over loaders
def test_log_likelihood_reads_a_dataloader_and_matches_the_exact_marginal():
    with default_dtype(torch.float64):
        x = {"x": torch.randn(23, 3, generator=torch.Generator().manual_seed(0)) * 2}
        loader = DataLoader(DictDataset(x), batch_size=5)
        est = log_likelihood(linear_gaussian(), ExactPosterior(), loader, k=4, k_chunk=3)
        torch.testing.assert_close(est, log_px(x["x"]), rtol=0, atol=1e-9)
        with pytest.raises(TypeError, match="batch 1 is a list; kizuna needs variable names"):
            log_likelihood(linear_gaussian(), ExactPosterior(), DataLoader(TensorDataset(x["x"]), batch_size=5), k=2)
        with pytest.raises(ValueError, match="share their first"):
            log_likelihood(linear_gaussian(), ExactPosterior(), {"x": x["x"], "y": x["x"][:3]}, k=2)


def test_log_likelihood_chunks_agree_within_monte_carlo_error():
    # the chunked and unchunked estimators are the same estimator (exact logsumexp over chunks);
    # with a wrong q they differ only by sampling noise: compare their row means at 5 SE
    with default_dtype(torch.float64):
        x = {"x": torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) * 2}
        torch.manual_seed(2)
        one = log_likelihood(linear_gaussian(), WrongPosterior(), x, k=64, k_chunk=64)
        torch.manual_seed(2)
        small = log_likelihood(linear_gaussian(), WrongPosterior(), x, k=64, k_chunk=5)
        diff = one - small
        assert_mc_close(diff.mean(), 0.0, diff.std() / len(diff) ** 0.5, what="chunked - unchunked")
        gap = log_px(x["x"]) - small  # Jensen: below log p(x) on average, and close with k=64
        assert gap.mean() > -5 * gap.std() / len(gap) ** 0.5 and gap.mean() < 0.05


def test_bits_per_dim_against_the_standard_normal():
    # log N(0; 0, I_D) = -D/2 log(2 pi): bits/dim = log2(2 pi) / 2 whatever D
    for dims in (1, 784):
        ll = torch.tensor([-0.5 * dims * LOG_2PI], dtype=torch.float64)
        assert bits_per_dim(ll, dims).item() == pytest.approx(0.5 * math.log2(2 * math.pi), rel=1e-12)
    with pytest.raises(ValueError, match="positive number of dimensions"):
        bits_per_dim(-1.0, 0)
    ll = -784 * math.log(2)  # numpy's and torch's integers are dimensions too; a bool or a float is not
    assert bits_per_dim(ll, np.int64(784)) == bits_per_dim(ll, torch.tensor(784)) == pytest.approx(1.0, rel=1e-12)
    for bad in (True, 3.0, torch.tensor(3.0)):
        with pytest.raises(ValueError, match="positive integer number of dimensions"):
            bits_per_dim(-1.0, bad)


def test_the_training_guide_runs(tmp_path, monkeypatch):
    """Every ```python block of docs/training.md, in order, in one namespace."""
    import re
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "training.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {}
    threads = torch.get_num_threads()
    try:
        for block in blocks:
            exec(compile(block, str(guide), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_the_gradient_check_finds_every_non_finite_value_and_leaves_gradients_unchanged(
        dtype: torch.dtype, bad: float | None) -> None:
    """`_all_finite` (AMP's fused check, falling back to a fused norm) against ``torch.isfinite``."""
    from kizuna.models.model import _all_finite

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, 5, generator=gen).to(dtype), torch.randn(3, generator=gen), torch.randn(2, 2, 2).to(dtype)]
    if bad is not None:
        grads[2][1, 0, 1] = bad
    before = [g.clone() for g in grads]
    assert _all_finite(grads) == all(bool(torch.isfinite(g).all()) for g in grads)
    for g, b in zip(grads, before):
        torch.testing.assert_close(g, b, equal_nan=True, rtol=0, atol=0)
    assert _all_finite([])


def test_an_iterator_read_once_is_refused_for_several_epochs():
    """A generator of batches can be read once: fit for two epochs says so before training (epoch 2 failed with "the
    training data yielded no batch" after epoch 1's steps); one epoch at a time works."""
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)
    model = Model(-LogProb(p).mean())
    with pytest.raises(ValueError, match="data is an iterator .* can be read once"):
        model.fit(({"x": torch.randn(4, 2)} for _ in range(3)), epochs=2, quiet=True)
    assert model.epoch == 0
    for _ in range(2):
        model.fit(({"x": torch.randn(4, 2)} for _ in range(3)), epochs=1, quiet=True)
    assert model.epoch == 2


def test_seed_streams_takes_every_torch_seed_and_names_one_out_of_range() -> None:
    """``seed_streams(2**64 - 1)`` (a seed torch takes) raised torch's "Overflow when unpacking long long" from the
    shuffling generator's seed + 1; below that the streams are those of ``seed`` and ``seed + 1`` as before."""
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=torch.ones(1))
    model = Model(-LogProb(p).mean())
    model.seed_streams(2**64 - 1)
    assert model._shuffle.initial_seed() == 0
    model.seed_streams(5)
    assert model._shuffle.initial_seed() == 6
    assert torch.equal(model._rng, torch.Generator().manual_seed(5).get_state())
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="seed must lie in"):
            model.seed_streams(bad)
        with pytest.raises(ValueError, match="fit: seed must lie in"):
            model.fit({"x": torch.zeros(4, 1)}, epochs=1, seed=bad, quiet=True)


class _NoisyDataset(Dataset):
    """A dataset that draws random numbers on every read (augmentation), from torch's, Python's and numpy's streams."""

    def __init__(self) -> None:
        self.x = torch.linspace(-1, 1, 12).reshape(12, 1)

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import random

        jitter = 0.01 * torch.randn(1) + 0.001 * random.random() + 0.001 * float(np.random.rand())
        return {"x": self.x[i] + jitter.to(self.x.dtype)}


def test_fit_with_a_seed_leaves_the_global_streams_alone_with_a_dataset_that_draws() -> None:
    """`Batches` reads the first item to check the names before fit's own stream is entered: a dataset that draws
    random numbers moved torch's global generator (and Python's, numpy's) by that read. With ``seed=`` torch's global
    generator is left as it was (the dataset's torch draws come from the model's stream), and Python's and numpy's
    move by the dataset's own reads only: 2 epochs of 12 items, as 24 reads outside fit move them."""
    import random

    def seeded() -> None:
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)

    seeded()
    torch_state = torch.get_rng_state()
    dataset = _NoisyDataset()
    p = Normal(var=["x"], loc=torch.zeros(1), scale=1.0)
    p.loc = nn.Parameter(torch.zeros(1))
    model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
    model.fit(DataLoader(dataset, batch_size=4, shuffle=True), epochs=2, seed=0, quiet=True)
    after = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    seeded()
    for i in range(24):
        dataset[i % 12]
    assert torch.equal(after[0], torch_state)
    assert after[1] == random.getstate()
    assert np.array_equal(after[2], np.random.get_state()[1])


def test_a_gpu_models_cuda_stream_continues_across_fit_calls_and_checkpoints(monkeypatch, tmp_path) -> None:
    """On a GPU, fit seeded the CUDA generator from the model's CPU stream at every call (one more CPU draw, and a
    new CUDA stream), so fit(2 epochs) then fit(3) drew other numbers than fit(5); and an epoch's checkpoint kept
    no CUDA stream. Now the stream is seeded when the run starts and continued after, and saved with the model and
    in every epoch's checkpoint. No GPU here: torch's CUDA generator is stood in for by a fake that records its
    calls, every training step moves it as GPU draws would, and fit is told the model is on CUDA device 0."""
    from kizuna.models import fit as fit_module

    calls: list[tuple[str, object]] = []
    state = {"cuda": torch.tensor([0], dtype=torch.uint8)}

    def manual_seed(seed: int) -> None:
        calls.append(("seed", seed))
        state["cuda"] = torch.tensor([seed % 251], dtype=torch.uint8)

    def set_state(s: torch.Tensor, device: object = None) -> None:
        calls.append(("set", int(s[0])))
        state["cuda"] = s.clone()

    monkeypatch.setattr(torch.cuda, "manual_seed", manual_seed)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: state["cuda"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices=(): contextlib.nullcontext())
    monkeypatch.setattr(fit_module, "_cuda_index", lambda model: 0)

    def model() -> Model:
        p = Normal(var=["x"], loc=torch.zeros(1), scale=1.0)
        p.loc = nn.Parameter(torch.zeros(1))
        m = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
        step = m.step

        def moving_step(*args: object, **kwargs: object) -> object:
            state["cuda"] = state["cuda"] + 1  # the step's GPU draws
            return step(*args, **kwargs)

        m.step = moving_step
        return m

    data = {"x": torch.randn(8, 1)}
    whole = model()
    whole.fit(data, epochs=3, batch_size=4, seed=0, quiet=True)  # 2 steps an epoch
    assert [c[0] for c in calls] == ["seed"] and int(whole._cuda_rng[0]) == (int(calls[0][1]) % 251 + 6) % 256
    after_whole = (int(whole._cuda_rng[0]), whole._rng.clone())
    calls.clear()
    split = model()
    split.fit(data, epochs=1, batch_size=4, seed=0, quiet=True, checkpoint=tmp_path / "c.pt")
    saved = model()
    saved.load(tmp_path / "c.pt")
    assert torch.equal(saved._cuda_rng, split._cuda_rng)  # the epoch's checkpoint holds the stream after it
    saved.fit(data, epochs=2, batch_size=4, quiet=True)  # resumed: the saved stream is set, no new seed
    assert [c[0] for c in calls] == ["seed", "set"]
    assert (int(saved._cuda_rng[0]), saved._rng.clone())[0] == after_whole[0]
    assert torch.equal(saved._rng, after_whole[1])
    saved.seed_streams(1)
    assert saved._cuda_rng is None  # seeded again from the new stream when the next run starts
