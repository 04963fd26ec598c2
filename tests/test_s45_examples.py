"""Command lines checked before the work, and UNet's dropout (stop 45, review J, findings 1, 2, 3 and 5).

* slot_diagnostics.py ``--weights nan`` / ``-1`` ran as "no slot model" under their own label; ``1`` failed in
  ConceptNames after the earlier weights' chains had run. Now `_args.fraction`: a number in [0, 1).
* ``--out`` / ``--json`` / ``--dump`` in a missing folder failed when the first result was written, after the first
  run's minutes of work. Now `_args.output_file` (a file whose folder exists and is writable) and
  `_args.output_folder` (the ``kizuna`` command's folder check) refuse them while parsing.
* ladder_vae_curves.py parsed each model spec only when its turn came: ``vae ladder:bogus=1`` trained the VAE, then
  failed. Now every spec is checked while parsing (and by ``main`` before the data load).
* ``UNet(dropout=nan)`` built and failed at the first training forward; ``-0.5`` got torch's message, without UNet's
  name; ``1`` (every block's branch zeroed in training) was taken.

Parsing only (`test_examples_args.parsed`: ``parse_args`` stopped), so nothing is loaded or trained.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from example_loader import load_example
from test_examples_args import parsed, usage_error

from kizuna.nets.unet import UNet

# --- finding 1: slot_diagnostics --weights -------------------------------------------------------------------------


@pytest.mark.parametrize("weight", ["nan", "-1", "1", "1.5", "inf"])
def test_slot_weights_outside_0_1_are_usage_errors(weight, monkeypatch, capsys):
    message = usage_error("slot_diagnostics", ["oracle", "--weights", "0.2", weight], monkeypatch, capsys)
    assert f"argument --weights: invalid value '{weight}': give a number in [0, 1)" in message


def test_slot_weight_zero_is_no_slot_model(monkeypatch):
    assert parsed("slot_diagnostics", ["oracle", "--weights", "0", "0.5"], monkeypatch).weights == [0.0, 0.5]


@pytest.mark.parametrize("weight", [float("nan"), -1.0])
def test_oracle_refuses_a_weight_that_is_not_zero_or_a_probability(weight):
    """`oracle` itself (called from Python): only 0 means "no slot model"; NaN and -1 ran as 0."""
    from kizuna.datasets.house import simulated_house

    house = simulated_house(20, seed=0)
    with pytest.raises(ValueError, match="ConceptNames: weight is a probability strictly between 0 and 1, got"):
        load_example("slot_diagnostics").oracle(house, weight, 0, sweeps=0)


# --- finding 2: output files and folders ---------------------------------------------------------------------------

OUTPUTS = [  # (script, the other arguments it needs, the option writing a file)
    ("robot_house", ["--smoke"], "--out"),
    ("serket_gmm_samplers", ["--smoke"], "--out"),
    ("serket_mlda_evidence", ["--smoke"], "--out"),
    ("serket_gmm_on_latents", ["--smoke", "--latents", "."], "--out"),
    ("serket_table", ["--smoke"], "--json"),
]


@pytest.mark.parametrize(("name", "argv", "option"), OUTPUTS)
def test_an_output_file_in_a_missing_folder_is_a_usage_error(name, argv, option, tmp_path, monkeypatch, capsys):
    target = tmp_path / "missing" / "rows.jsonl"
    message = usage_error(name, [*argv, option, str(target)], monkeypatch, capsys)
    assert f"argument {option}: cannot write {target}: the folder {tmp_path / 'missing'} does not exist" in message


@pytest.mark.parametrize(("name", "argv", "option"), OUTPUTS)
def test_an_output_file_that_is_a_folder_or_under_a_file_is_a_usage_error(name, argv, option, tmp_path, monkeypatch,
                                                                          capsys):
    message = usage_error(name, [*argv, option, str(tmp_path)], monkeypatch, capsys)
    assert f"argument {option}: cannot write {tmp_path}: it is a folder (give a file name)" in message
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "rows.jsonl"
    message = usage_error(name, [*argv, option, str(target)], monkeypatch, capsys)
    assert f"argument {option}: cannot write {target}: {tmp_path / 'file'} is not a folder" in message


@pytest.mark.parametrize(("name", "argv", "option"), OUTPUTS)
def test_an_output_file_in_an_existing_folder_is_taken_and_not_created(name, argv, option, tmp_path, monkeypatch):
    target = tmp_path / "rows.jsonl"
    args = parsed(name, [*argv, option, str(target)], monkeypatch)
    assert str(getattr(args, option[2:])) == str(target) and not target.exists()
    (tmp_path / "old.jsonl").write_text("a row\n")  # an existing file is appended to (or replaced): taken as is
    args = parsed(name, [*argv, option, str(tmp_path / "old.jsonl")], monkeypatch)
    assert (tmp_path / "old.jsonl").read_text() == "a row\n"


def test_an_unwritable_output_folder_or_file_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """(os.access stubbed: the tests may run as root, for whom every folder is writable.)"""
    (tmp_path / "old.jsonl").write_text("")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    message = usage_error("robot_house", ["--out", str(tmp_path / "rows.jsonl")], monkeypatch, capsys)
    assert f"argument --out: cannot write {tmp_path / 'rows.jsonl'}: the folder {tmp_path} is not writable" in message
    message = usage_error("serket_table", ["--json", str(tmp_path / "old.jsonl")], monkeypatch, capsys)
    assert f"argument --json: cannot write {tmp_path / 'old.jsonl'}: the file is not writable" in message


def test_dump_and_prepared_data_folders_are_checked_while_parsing(tmp_path, monkeypatch, capsys):
    """``--dump`` under a file failed in Path.mkdir after the first update; prepare_serket_data's ``out`` that is a
    file failed with a FileExistsError traceback after reading SERKET's data."""
    (tmp_path / "file").write_text("")
    message = usage_error("serket_gmm_samplers", ["--smoke", "--dump", str(tmp_path / "file" / "dump")], monkeypatch,
                          capsys)
    assert f"argument --dump: cannot create the folder {tmp_path / 'file' / 'dump'}: {tmp_path / 'file'} is not a " \
           "folder" in message
    assert parsed("serket_gmm_samplers", ["--smoke", "--dump", str(tmp_path / "new")], monkeypatch).dump == \
        str(tmp_path / "new")
    message = usage_error("prepare_serket_data", [str(tmp_path), str(tmp_path / "file")], monkeypatch, capsys)
    assert f"argument out: {tmp_path / 'file'} exists and is not a folder" in message


# --- finding 3: ladder_vae_curves model specs ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("ladder:bogus=1", "'ladder:bogus=1': unknown setting 'bogus'; known: ['depth', 'dropout', 'free_nats',"),
    ("ladder:depth=x", "'ladder:depth=x': depth: invalid value 'x': give a positive integer"),
    ("lader:depth=2", "a model is 'vae' or 'ladder:key=value,...', got 'lader:depth=2'"),
    ("vae:depth=2", "a model is 'vae' or 'ladder:key=value,...', got 'vae:depth=2'"),
    ("ladder:z_dims=32/0", "'ladder:z_dims=32/0': z_dims: invalid value 0: give a positive integer"),
    ("ladder:dropout=nan", "'ladder:dropout=nan': dropout: invalid value 'nan': give a number in [0, 1)"),
    ("ladder:free_nats=-1", "'ladder:free_nats=-1': free_nats: invalid value '-1': give a finite number >= 0"),
    ("ladder:merge=sum", "'ladder:merge=sum': merge: invalid value 'sum': give product, residual or whitened"),
    ("ladder:z_dims=32/4/2", "'ladder:z_dims=32/4/2': LadderVAE: give one hidden width per stochastic layer, got "
                             "z_dims=[32, 4, 2], hidden=[400, 50]"),
    ("ladder:max_prior_scale=0.5",
     "'ladder:max_prior_scale=0.5': LadderVAE: max_prior_scale must be a finite number > log 2"),
])
def test_every_model_spec_is_checked_while_parsing(spec, message, monkeypatch, capsys):
    assert f"argument models: {message}" in usage_error("ladder_vae_curves", ["vae", spec], monkeypatch, capsys)


def test_model_specs_parse_as_before(monkeypatch):
    curves = load_example("ladder_vae_curves")
    kind, cfg = curves.parse_model("ladder:depth=1,z_dims=8/2,hidden=16/4,top_down=3,merge=residual,dropout=0.1,"
                                   "max_prior_scale=1,warmup=5,free_nats=0.5,k_train=1,pretrain=1")
    assert kind == "ladder"
    assert cfg == {"z_dims": [8, 2], "hidden": [16, 4], "depth": 1, "warmup": 5, "free_nats": 0.5, "k_train": 1,
                   "pretrain": 1, "merge": "residual", "top_down": [3], "dropout": 0.1, "max_prior_scale": 1.0}
    assert curves.parse_model("vae") == ("vae", {}) and curves.parse_model("ladder") == ("ladder", curves.LADDER)
    assert parsed("ladder_vae_curves", ["vae", "ladder:depth=2,z_dims=32/4,hidden=400/50"], monkeypatch).models == \
        ["vae", "ladder:depth=2,z_dims=32/4,hidden=400/50"]
    state = torch.random.get_rng_state()  # the throwaway model checking the settings draws nothing of the run's
    curves.parse_model("ladder")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_main_checks_every_spec_before_loading_the_data(monkeypatch):
    curves = load_example("ladder_vae_curves")

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(curves, "binary_images", no_data)
    with pytest.raises(ValueError, match="unknown setting 'bogus'"):
        curves.main(["vae", "ladder:bogus=1"], epochs=1, every=1, k=2, n_eval=10, seed=0)


# --- finding 5: UNet's dropout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [float("nan"), -0.5, 1.5, 1.0, float("inf"), True, "0.1"])
def test_unet_refuses_a_dropout_outside_0_1_at_construction(dropout):
    with pytest.raises(ValueError, match=r"UNet: dropout must be a number in \[0, 1\), got " + repr(dropout)):
        UNet((1, 4, 4), channels=8, channel_mults=(1,), dropout=dropout)


def test_unet_dropout_in_range_is_used():
    """0.5 reaches every block's nn.Dropout (as a float, also from a 0-D tensor), and a training forward drops."""
    for given in (0.5, torch.tensor(0.5, dtype=torch.float64), np.float64(0.5)):
        net = UNet((1, 4, 4), channels=8, channel_mults=(1,), dropout=given)
        ps = {type(m.p) for m in net.modules() if isinstance(m, torch.nn.Dropout)} | \
             {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)}
        assert ps == {float, 0.5}
    torch.manual_seed(0)
    torch.nn.init.normal_(net.out.weight)  # the output convolution starts at zero
    x, t = torch.randn(3, 16), torch.tensor([1, 2, 3])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
