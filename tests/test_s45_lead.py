"""Stop 45, the lead's fixes of items noticed at stop 44.

`simple_diffusion_loss` of a 16-bit model is computed in float32 like the bound (stop 44 moved only the bound): the
reference is a float32 model whose network rounds as the 16-bit one does, given the same seed (the same t and noise),
so that only the network is in 16 bits.
"""

from __future__ import annotations

import pytest
import torch
from test_s44_half import HALF, three_models

from kizuna.losses import simple_diffusion_loss


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_simple_diffusion_loss_is_float32_and_the_float32_models(dt):
    p16, _, p32r = three_models(dt)
    x0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0], [0.25, -0.75], [0.0, 0.125]]).repeat(50, 1)
    out = []
    with torch.no_grad():
        for p in (p16, p32r):
            torch.manual_seed(1)
            out.append(simple_diffusion_loss(p.reverse).eval({"x_0": x0.to(p.schedule.dtype)}))
    assert out[0].dtype == torch.float32 and out[0].shape == (len(x0),)
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_simple_diffusion_loss_trains_the_16_bit_network(dt):
    p16 = three_models(dt)[0]
    loss = simple_diffusion_loss(p16.reverse).mean()
    value = loss.eval({"x_0": torch.randn(8, 2).to(dt)})
    value.backward()
    grad = p16.reverse.eps_net.lin.weight.grad
    assert value.dtype == torch.float32 and grad is not None and grad.dtype == dt
    assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def test_simple_diffusion_loss_prints_as_before():
    p = three_models(torch.bfloat16)[0]
    assert str(simple_diffusion_loss(p.reverse)) == "E_{u(t)}[E_{q(x_t|x_0,t)}[||ε - ε_θ(x_t,t)||^2]]"


def test_word_segmentation_data_that_is_a_folder_or_not_text_is_a_usage_error(tmp_path, capsys):
    """``--data`` given the corpus's folder raised a raw IsADirectoryError (and a binary file UnicodeDecodeError)."""
    from test_s45_npylm import load_example

    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    for data, message in ((tmp_path, f"--data {tmp_path} is a folder: pass the corpus file itself"),
                          (binary, f"--data {binary} cannot be read as a text corpus (UnicodeDecodeError")):
        with pytest.raises(SystemExit) as exit_:
            load_example("word_segmentation").main(["--data", str(data)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_word_segmentation_reads_data_from_a_pipe(tmp_path):
    """``--data <(head -n 20 br-phono.txt)`` (a named pipe, not a regular file) is read, as before the folder check."""
    import os
    import threading

    from test_s45_npylm import load_example

    fifo = tmp_path / "corpus"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("ab cd\nef\nab ef cd\n"))
    writer.start()
    gold = load_example("word_segmentation").load_brent(fifo)
    writer.join()
    assert gold == [["ab", "cd"], ["ef"], ["ab", "ef", "cd"]]
