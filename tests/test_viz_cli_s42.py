"""kizuna.viz reads labels as `kizuna.metrics` does (bfloat16 and float16 tensors, tensors that require grad, tensors
on another device), float16 class ids plot without warnings, and the ``kizuna`` command's "put it after the command"
message covers abbreviated demo options (review of stop 42)."""

from __future__ import annotations

import shlex
import warnings

import numpy as np
import pytest
import torch
from test_viz_checks import _captured, _point_colours

from kizuna.cli import build_parser, main
from kizuna.metrics import clustering_accuracy
from kizuna.viz import (
    confusion_table,
    draw_latent_space,
    match_clusters,
    pca_2d,
    plot_clustering_comparison,
    plot_latent_space,
)

TRUTH = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
PRED = torch.tensor([3, 3, 4, 4, 5, 4, 5, 3])
Z = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [2.0, -1.0, 0.0], [3.0, 2.0, 1.0], [-1.0, 0.0, 0.5],
                  [0.5, 0.5, 0.5], [1.5, -2.0, 1.0], [-2.0, 1.0, -0.5]], dtype=torch.float64)


class _OnAnotherDevice(torch.Tensor):
    """A CPU tensor that numpy refuses as it refuses one on a GPU (``numpy()``, and so ``np.asarray``, raise torch's
    message for a CUDA tensor) until ``.cpu()`` copies it to a plain tensor: the device path without a GPU."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def _elsewhere(t: torch.Tensor) -> torch.Tensor:
    return t.clone().as_subclass(_OnAnotherDevice)


def test_the_stand_in_device_tensor_is_refused_by_numpy_until_copied_to_the_cpu():
    t = _elsewhere(Z)
    with pytest.raises(TypeError, match="cuda:0 device type"):
        np.asarray(t)
    with pytest.raises(TypeError, match="cuda:0 device type"):
        t.detach().to(torch.float64).numpy()
    np.testing.assert_array_equal(t.detach().cpu().numpy(), Z.numpy())


DTYPES = [torch.int64, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matching_and_confusion_read_labels_of_every_dtype_as_the_metrics_do(dtype):
    """bfloat16 labels, which ``clustering_accuracy`` scores, raised numpy's "Got unsupported ScalarType BFloat16" in
    `match_clusters` and `confusion_table`; the matching is now the integer labels' one (checked against the Hungarian
    accuracy: 7 of 8 on the diagonal)."""
    names = match_clusters(TRUTH.to(dtype), PRED)
    np.testing.assert_array_equal(names, [0, 0, 1, 1, 2, 1, 2, 0])
    table, classes = confusion_table(TRUTH.to(dtype), PRED.to(dtype))
    np.testing.assert_array_equal(table, [[3, 0, 0], [0, 2, 0], [0, 1, 2]])
    np.testing.assert_array_equal(classes, [0, 1, 2])
    assert np.trace(table) / table.sum() == clustering_accuracy(TRUTH, PRED) == 0.875


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plots_colour_labels_of_every_dtype_as_integer_labels(monkeypatch, tmp_path, dtype):
    """The same panel colours (by class value) as for int64 labels, where bfloat16 labels raised numpy's TypeError in
    `plot_latent_space` and `plot_clustering_comparison`."""
    figures = _captured(monkeypatch, "latent")
    plot_latent_space([(Z, TRUTH, "int"), (Z, TRUTH.to(dtype), "dtype")], tmp_path / "l.png")
    reference, coloured = figures[0].axes[:2]
    np.testing.assert_array_equal(_point_colours(coloured), _point_colours(reference))
    figures = _captured(monkeypatch, "comparison")
    plot_clustering_comparison(TRUTH.to(dtype), [("m", PRED.to(dtype))], tmp_path / "c.png", confusions=[0],
                               latent_panels=[(Z, PRED.to(dtype), "clusters")], mark_wrong=[True])
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert "m\naccuracy 0.875" in axes
    # circled: the points whose cluster id differs from the class (all 8: ids 3..5 against classes 0..2)
    assert len(axes["clusters"].collections[1].get_offsets()) == 8


def test_a_bfloat16_comparison_figure_is_written(tmp_path):
    path = plot_clustering_comparison(TRUTH.bfloat16(), [("m", PRED)], tmp_path / "c", confusions=[0],
                                      latent_panels=[(Z, TRUTH.bfloat16(), "classes")])
    assert path == tmp_path / "c.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("labels", [np.array([0, 0, 1, 1, 2, 2, 2, 0], dtype=np.float16),
                                    torch.tensor([0, 0, 1, 1, 2, 2, 2, 0], dtype=torch.float16)],
                         ids=["numpy", "torch"])
def test_float16_class_ids_plot_without_an_overflow_warning(monkeypatch, tmp_path, labels):
    """``np.abs(classes) < 2**31`` cast 2**31 to float16 (inf): "RuntimeWarning: overflow encountered in cast" on every
    plot with float16 class ids, an error under ``-W error``. Whole float16 ids are the integer classes, coloured so."""
    figures = _captured(monkeypatch, "latent")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_latent_space([(Z, TRUTH, "int"), (Z, labels, "float16")], tmp_path / "l.png")
    reference, coloured = figures[0].axes[:2]
    np.testing.assert_array_equal(_point_colours(coloured), _point_colours(reference))


def test_latents_and_labels_on_another_device_are_copied_to_the_cpu(monkeypatch, tmp_path):
    """Latents on a GPU reached ``coords.numpy()`` still on the GPU ("can't convert cuda:0 device type tensor to
    numpy"), and `plot_clustering_comparison` read its labels with ``np.asarray``; the points drawn are the CPU
    tensors' `pca_2d`."""
    coords, explained = pca_2d(_elsewhere(Z))
    assert type(coords) is torch.Tensor and coords.device.type == "cpu" and coords.dtype == torch.float64
    expected, expected_explained = pca_2d(Z)
    torch.testing.assert_close(coords, expected, rtol=0, atol=0)
    torch.testing.assert_close(explained, expected_explained, rtol=0, atol=0)
    np.testing.assert_array_equal(match_clusters(_elsewhere(TRUTH), _elsewhere(PRED)), [0, 0, 1, 1, 2, 1, 2, 0])

    figures = _captured(monkeypatch, "latent")
    plot_latent_space([(_elsewhere(Z), _elsewhere(TRUTH), "a")], tmp_path / "l.png")
    np.testing.assert_array_equal(figures[0].axes[0].collections[0].get_offsets(), expected.numpy())
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    draw_latent_space(ax, _elsewhere(Z), _elsewhere(TRUTH), "a", wrong=_elsewhere(TRUTH != PRED))
    np.testing.assert_array_equal(ax.collections[1].get_offsets(), expected.numpy()[(TRUTH != PRED).numpy()])

    figures = _captured(monkeypatch, "comparison")
    plot_clustering_comparison(_elsewhere(TRUTH), [("m", _elsewhere(PRED))], tmp_path / "c.png", confusions=[0],
                               latent_panels=[(_elsewhere(Z), _elsewhere(PRED), "clusters")], mark_wrong=[True])
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert "m\naccuracy 0.875" in axes
    np.testing.assert_array_equal(axes["clusters"].collections[0].get_offsets(), expected.numpy())


def test_labels_and_latents_that_require_grad_are_plotted(monkeypatch, tmp_path):
    """Float labels from a model's output that still require grad: ``np.asarray`` raised "Can't call numpy() on Tensor
    that requires grad" in `plot_clustering_comparison`."""
    truth = TRUTH.double().requires_grad_()
    pred = PRED.double().requires_grad_()
    z = Z.clone().requires_grad_()
    figures = _captured(monkeypatch, "comparison")
    plot_clustering_comparison(truth, [("m", pred)], tmp_path / "c.png", confusions=[0],
                               latent_panels=[(z, pred, "clusters")], mark_wrong=[True])
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert "m\naccuracy 0.875" in axes
    np.testing.assert_array_equal(axes["clusters"].collections[0].get_offsets(), pca_2d(Z)[0].numpy())


@pytest.mark.parametrize(("argv", "option", "suggestion", "parsed"), [
    (["--se", "3", "demo"], "--seed", "kizuna demo --seed 3", {"which": "house", "seed": 3}),
    (["--se=3", "demo", "digits", "--q"], "--seed", "kizuna demo digits --seed=3 --q",
     {"which": "digits", "seed": 3, "quick": True}),
    (["--q", "--o", "-x", "demo"], "--quick", "kizuna demo --quick --out=-x", {"quick": True, "out": "-x"}),
    (["--w", "phonemes"], "--words", "kizuna demo --words phonemes", {"which": "house", "words": "phonemes"}),
    (["--quick", "--s", "2", "demo"], "--quick", "kizuna demo --quick --seed 2", {"quick": True, "seed": 2}),
])
def test_an_abbreviated_option_before_the_command_gets_the_same_message(capsys, argv, option, suggestion, parsed):
    """argparse takes ``kizuna demo --se 3`` (a unique prefix); ``kizuna --se 3 demo`` said "argument COMMAND: invalid
    choice: '3' (choose from 'demo')". It now gets the message of ``--seed 3 demo``, the moved options written in
    full, and the suggestion parses to what was meant."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.rstrip("\n").endswith(f"{option} is an option of the demo; put it after the command: {suggestion}"), err
    args = build_parser().parse_args(shlex.split(suggestion)[1:])
    assert args.command == "demo" and {k: getattr(args, k) for k in parsed} == parsed


@pytest.mark.parametrize("argv", [["--ver"], ["--h"]])
def test_abbreviations_of_the_top_level_options_are_not_taken_for_demo_options(capsys, argv):
    """``--ver`` is ``--version`` and ``--h`` ``--help`` (a prefix of the demo's --help too, so of no demo option)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    assert "option of the demo" not in capsys.readouterr().err
