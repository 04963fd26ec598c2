"""Stop 45, review G: `Model.fit` with per-row lists in dict data, and data-parallel validation of a model with
buffers where a rank has no validation rows.

References: the same data given as a tensor (a per-row list of the strings of the numbers must train bitwise as the
numbers themselves, with the same shuffling), the closed-form Normal log density, and the rows each batch holds read
back inside the network. The data-parallel checks run 2 gloo processes on the CPU (this file is the worker: ``python
test_s45_fit.py OUT`` with torchrun's environment variables), with a process-group timeout of a few seconds so that a
collective one rank never joins fails instead of hanging.
"""

import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from test_distributed import _free_port, _port_taken
from torch import nn

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model

N = 20


class Reads(Normal):
    """p(y|text, i) = N(w * float(text), 1): the text of each row is the string of its number (or the number itself,
    a tensor, for the reference run); the row index ``i`` (a tensor) beside it records which rows each batch pairs."""

    def __init__(self):
        super().__init__(var=["y"], cond_var=["text", "i"], name="p")
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.seen = []

    def forward(self, text, i):
        self.seen.append((list(text) if not isinstance(text, torch.Tensor) else None, i[:, 0].tolist()))
        f = torch.tensor([[float(s)] for s in text], dtype=torch.float64)
        return {"loc": self.w * f, "scale": torch.ones_like(f)}


def rows(n=N):
    g = torch.Generator().manual_seed(0)
    value = (torch.arange(n, dtype=torch.float64) % 7 + 1)[:, None]
    y = 2 * value + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return value, y, torch.arange(n, dtype=torch.float64)[:, None]


def text_data(kind=list, n=N):
    value, y, i = rows(n)
    return {"text": kind(f"{v:g}" for v in value[:, 0].tolist()), "y": y, "i": i}


def fitted(data, **options):
    p = Reads()
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.01})
    history = model.fit(data, seed=0, quiet=True, **options)
    return p, history


def check_pairs(p, n=N):
    """Every batch paired each row's text with that row (the value of row i is i % 7 + 1)."""
    for text, index in p.seen:
        assert text == [f"{int(i) % 7 + 1:g}" for i in index]


@pytest.mark.parametrize("kind", [list, tuple])
def test_a_per_row_list_is_cut_and_shuffled_with_the_tensors(kind):
    """Before, the list went whole and in its own order to every batch: batch_size >= rows trained on shuffled y
    against unshuffled strings without an error (mis-paired rows), several batches failed in the distribution."""
    for batch_size in (N + 1, 8):  # one batch holding every row (no error before, rows mis-paired), several
        p, history = fitted(text_data(kind), epochs=3, batch_size=batch_size)
        check_pairs(p)
        sizes = [len(index) for _, index in p.seen]
        assert sizes == ([8, 8, 4] * 3 if batch_size == 8 else [N] * 3)
        orders = [sum((index for _, index in p.seen[k:k + len(sizes) // 3]), []) for k in range(0, len(sizes),
                                                                                              len(sizes) // 3)]
        assert all(sorted(o) == list(range(N)) for o in orders) and orders[0] != list(range(N))  # shuffled, all rows
        # the same numbers as a tensor: the same shuffle and arithmetic, bitwise
        value, y, i = rows()
        reference, expected = fitted({"text": value, "y": y, "i": i}, epochs=3, batch_size=batch_size)
        assert history.train == expected.train and torch.equal(p.w, reference.w)
        assert [index for _, index in p.seen] == [index for _, index in reference.seen]


def test_validation_lists_and_the_epoch_mean_against_the_closed_form():
    """lr 0: every epoch's training and validation loss is the mean Normal NLL of all rows at w = 0."""
    p = Reads()
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.0})
    history = model.fit(text_data(), epochs=2, batch_size=6, valid=text_data(n=9), seed=0, quiet=True)
    check_pairs(p)
    for data, losses in ((rows(), history.train), (rows(9), history.valid)):
        y = data[1]
        nll = -torch.distributions.Normal(torch.zeros_like(y), 1.0).log_prob(y).mean().item()
        assert losses == pytest.approx([nll, nll], rel=1e-14)


def test_a_list_of_another_length_is_an_error_naming_both():
    data = text_data()
    data["text"] = data["text"][:7]
    message = ("fit: data['text'] is a list of 7 items, but the tensors of data (y, i) have 20 rows; fit cuts and "
               "shuffles a list or tuple with the rows, one item per row: give 20 items (a value the same for every "
               "batch goes in as a number or a 0-d tensor, or into the network itself)")
    with pytest.raises(ValueError) as err:
        fitted(data, epochs=1, batch_size=8)
    assert str(err.value) == message
    valid = text_data(tuple, n=5)
    valid["text"] = valid["text"] + ("1",)
    with pytest.raises(ValueError, match=r"fit: valid\['text'\] is a tuple of 6 items, but the tensors of valid "
                                         r"\(y, i\) have 5 rows"):
        fitted(text_data(), epochs=1, valid=valid)


# ------------------------------------------------------------------ data-parallel (2 gloo processes)
class BatchNormReg(Normal):
    def __init__(self):
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones(x.shape[0], 2, dtype=x.dtype)}


def batch_norm_data(n):
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(n, 3, generator=g, dtype=torch.float64),
            "y": torch.randn(n, 2, generator=g, dtype=torch.float64)}


def closed_form_nll(p, data):
    """The validation loss by hand: the network in evaluation mode (running statistics), Normal log density."""
    p.net.eval()
    with torch.no_grad():
        loc = p.net(data["x"])
    p.net.train()
    return -torch.distributions.Normal(loc, 1.0).log_prob(data["y"]).sum(-1).mean().item()


def worker(out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=8))
    rank, res = dist.get_rank(), {}
    try:  # a per-row list, sharded with the tensors
        p, history = fitted(text_data(), epochs=2, batch_size=4)
        res["list"] = (history.train, p.w.detach().clone(), p.seen)
    except Exception as err:
        res["list_error"] = f"{type(err).__name__}: {err}"
    train = batch_norm_data(16)
    for n_valid in (1, 3):  # 1 row: rank 1 has none; 3 rows: rank 0 has 2, rank 1 has 1
        valid = {k: v[:n_valid] for k, v in batch_norm_data(16 + n_valid).items()}
        torch.manual_seed(0)
        p = BatchNormReg()
        model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.01})
        try:
            history = model.fit(train, epochs=2, batch_size=4, valid=valid, seed=0, quiet=True)
            state = [t.clone() for t in p.state_dict().values()]
            res[f"bn{n_valid}"] = (history.valid, closed_form_nll(p, valid), state)
        except Exception as err:
            res[f"bn{n_valid}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            break  # the process group is unusable after a timeout
    gan_worker(res, out, rank)  # review N: a GAN (test_s45_gan.py's), each rank with noise of its own
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def gan_worker(res, out, rank):
    """One SGD step (lr 1: the step is the gradient) of a GAN on 2 ranks x 4 rows, recording each rank's generator
    noise, with disjoint players and with a layer shared by both; then 4 epochs (shared layer, Adam, dropout,
    validation) against 2 + a checkpoint + a fresh model loading it + 2 more."""
    from test_s45_gan import build_gan, gan_data

    for shared in (False, True):
        try:
            model, g, d = build_gan(shared=shared, lr=1.0, data_term=False)
            before = [t.detach().clone() for t in [*g.parameters(), *d.parameters()]]
            model.fit(gan_data(), epochs=1, batch_size=4, seed=0, quiet=True)
            after = [t.detach().clone() for t in [*g.parameters(), *d.parameters()]]
            res[f"gan_step_{shared}"] = (g.seen, before, after)
        except Exception as err:
            res[f"gan_step_{shared}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    valid = {"x": gan_data(12)["x"][8:]}
    runs = []
    try:
        for resumed in (False, True):
            model, g, d = build_gan(optimizer=torch.optim.Adam, lr=0.01, dropout=0.3)
            if resumed:
                model.fit(gan_data(), epochs=2, batch_size=2, valid=valid, seed=0, quiet=True,
                          checkpoint=out / "gan.pt")
                torch.manual_seed(11 + rank)  # the global stream disturbed: the checkpoint's streams are continued
                model, g, d = build_gan(optimizer=torch.optim.Adam, lr=0.01, dropout=0.3)
                model.load(out / "gan.pt")
                model.fit(gan_data(), epochs=2, batch_size=2, valid=valid, quiet=True)
            else:
                model.fit(gan_data(), epochs=4, batch_size=2, valid=valid, seed=0, quiet=True)
            runs.append((model.history, [t.detach().clone() for t in [*g.parameters(), *d.parameters()]], g.seen))
        res["gan_resume"] = runs
    except Exception as err:
        res["gan_resume_error"] = f"{type(err).__name__}: {str(err)[:300]}"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("s45_ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    for _ in range(3):  # (a new port when the chosen one was taken meanwhile: `_port_taken`)
        env["MASTER_PORT"] = str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(out)],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(2)]
        try:  # rank 0 first: where its port was taken, rank 1 waits for a master that never comes
            logs = [procs[0].communicate(timeout=120)[0]]
            taken = procs[0].returncode != 0 and _port_taken(logs[0])
            if taken:
                procs[1].kill()
            logs.append(procs[1].communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.kill()
            raise AssertionError("the two ranks did not finish in 120 s: "
                                 + "\n".join(proc.communicate()[0][-3000:] for proc in procs)) from None
        if not taken:
            break
    assert all(proc.returncode == 0 for proc in procs), "\n".join(log[-3000:] for log in logs)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_data_parallel_validation_with_batch_norm_and_a_rank_without_rows(ranks):
    """A rank with no validation rows skipped the validation forward, in which DDP broadcasts the buffers (batch
    norm): the other rank waited in that broadcast, and both failed at the process group's timeout."""
    for n_valid in (1, 3):
        assert f"bn{n_valid}_error" not in ranks[0] and f"bn{n_valid}_error" not in ranks[1], (ranks[0], ranks[1])
        (valid_a, nll_a, state_a), (valid_b, nll_b, state_b) = ranks[0][f"bn{n_valid}"], ranks[1][f"bn{n_valid}"]
        assert valid_a == valid_b and all(torch.equal(a, b) for a, b in zip(state_a, state_b))
        assert len(valid_a) == 2 and all(math.isfinite(v) for v in valid_a)
        # the last epoch's validation loss: the mean over all validation rows with the final parameters and buffers
        assert nll_a == nll_b and valid_a[-1] == pytest.approx(nll_a, rel=1e-13)


def test_data_parallel_lists_are_sharded_with_the_tensors(ranks):
    """2 ranks x 4 rows: each rank's batches pair its rows' strings, and the run is one process's with batches of 8
    (the same numbers as a tensor)."""
    assert "list_error" not in ranks[0] and "list_error" not in ranks[1], (ranks[0].get("list_error"),)
    value, y, i = rows()
    reference, expected = fitted({"text": value, "y": y, "i": i}, epochs=2, batch_size=8)
    seen = []
    for r in ranks:
        train, w, batches = r["list"]
        p = Reads()
        p.seen = batches
        check_pairs(p)
        assert [len(index) for _, index in batches] == [4, 4, 2] * 2
        torch.testing.assert_close(torch.tensor(train), torch.tensor(expected.train), rtol=1e-13, atol=0)
        torch.testing.assert_close(w, reference.w.detach(), rtol=1e-13, atol=0)
        seen.append(batches)
    for k, (_, whole) in enumerate(reference.seen):  # rank r holds rows r, r + 2, ... of each global batch
        assert seen[0][k][1] == whole[0::2] and seen[1][k][1] == whole[1::2]


@pytest.mark.parametrize("shared", [False, True])
def test_data_parallel_gan_ranks_draw_their_own_noise_and_the_step_is_the_global_batchs(ranks, shared):
    """Review N: every rank drew the same generator noise (the global fake batch was 2 copies of one rank's). Now
    the ranks' noise differs, and the one SGD step (lr 1) is a hand-written step on the global batch: the
    discriminator's on the 8 data rows and the 8 fakes of both ranks' noise, then the generator's on both ranks'
    noise (a shared layer stepped by both; it was frozen in the generator's step, which DDP's reducer then
    failed on: "Encountered gradient which is undefined")."""
    import torch.nn.functional as F
    from test_s45_gan import build_gan, disc_logit, gan_data, gen_x

    key = f"gan_step_{shared}"
    assert f"{key}_error" not in ranks[0] and f"{key}_error" not in ranks[1], (ranks[0].get(f"{key}_error"),
                                                                               ranks[1].get(f"{key}_error"))
    (seen0, before, after0), (seen1, _, after1) = ranks[0][key], ranks[1][key]
    assert [z.shape for z in seen0] == [z.shape for z in seen1] == [(4, 2)] * 2  # the d step's noise, the g step's
    assert not torch.equal(seen0[0], seen1[0]) and not torch.equal(seen0[1], seen1[1])
    assert all(torch.equal(a, b) for a, b in zip(after0, after1))
    _, g, d = build_gan(shared=shared)
    assert all(torch.equal(a, b) for a, b in zip(before, [*g.parameters(), *d.parameters()]))
    with torch.no_grad():
        fake = gen_x(g, torch.cat([seen0[0], seen1[0]]))
    real = gan_data()["x"]
    loss = -(F.logsigmoid(disc_logit(d, real)).mean() + F.logsigmoid(-disc_logit(d, fake)).mean())
    for player, loss_of in ((d, lambda: loss), (g, lambda: -F.logsigmoid(
            disc_logit(d, gen_x(g, torch.cat([seen0[1], seen1[1]])))).mean())):
        params = list(player.parameters())
        grads = torch.autograd.grad(loss_of(), params)
        with torch.no_grad():
            for t, grad in zip(params, grads):
                t -= grad
    for got, want in zip(after0, [*g.parameters(), *d.parameters()]):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)
    assert max((a - b).abs().max() for a, b in zip(after0, before)) > 1e-2  # (it moved)


def test_data_parallel_gan_resumed_on_the_same_ranks_is_the_straight_run_bitwise(ranks):
    """4 epochs vs 2 + checkpoint + load + 2, both on 2 ranks: the same history, parameters and noise; the ranks'
    noise differs in every draw."""
    for r in ranks:
        assert "gan_resume_error" not in r, r.get("gan_resume_error")
        (history, params, seen), (history_resumed, params_resumed, seen_resumed) = r["gan_resume"]
        assert history == history_resumed and len(history) == 4
        assert all(torch.equal(a, b) for a, b in zip(params, params_resumed))
        assert len(seen) == 2 * len(seen_resumed) and all(torch.equal(a, b)
                                                          for a, b in zip(seen[len(seen_resumed):], seen_resumed))
    seen0, seen1 = ranks[0]["gan_resume"][0][2], ranks[1]["gan_resume"][0][2]
    assert len(seen0) == len(seen1) and not any(torch.equal(a, b) for a, b in zip(seen0, seen1))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
