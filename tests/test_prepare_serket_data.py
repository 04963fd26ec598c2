"""examples/prepare_serket_data.py turns a SERKET checkout's examples/ into the folder kizuna's SERKET
examples read (``--data``): checked on a miniature checkout built here, value for value."""

import numpy as np
import pytest
from example_loader import load_example


@pytest.mark.parametrize("zipped", [True, False])
def test_prepare_writes_the_arrays_the_examples_read(tmp_path, zipped):
    script = load_example("prepare_serket_data")
    written = script.miniature_checkout(tmp_path / "examples", zipped)
    image, speech, label = written["image"], written["modality2"], written["label"]
    out = script.prepare(tmp_path / "examples", tmp_path / "data")
    with np.load(out / "mnist3000.npz") as f:
        assert f["image"].dtype == np.float32 and f["modality2"].dtype == np.float32 and f["label"].dtype == np.int64
        np.testing.assert_array_equal(f["image"], image.astype(np.float32))
        np.testing.assert_array_equal(f["modality2"], speech.astype(np.float32))
        np.testing.assert_array_equal(f["label"], label)
    for name in ("mMLDA/histogram_w.txt", "HMM/data.txt", "VAE+GMM/category.txt"):
        assert (out / name).read_text() == "1 2 3\n"
    # the examples' own loader reads the folder
    digits = load_example("serket_vae_gmm").S.digits(out)
    np.testing.assert_array_equal(digits.label, label)


def test_missing_inputs_are_named(tmp_path):
    prepare = load_example("prepare_serket_data").prepare
    with pytest.raises(FileNotFoundError, match="give the examples/ folder of a Serket checkout"):
        prepare(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "examples" / "VAE+GMM+MLDA").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks data1.txt, data2.txt, category.txt"):
        prepare(tmp_path / "examples", tmp_path / "data")


def test_command_line_names_a_wrong_folder_without_a_traceback(tmp_path, capsys):
    """The script's own command line: a wrong folder is a usage error (exit status 2, one line), not a traceback."""
    main = load_example("prepare_serket_data").main
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "nowhere"), str(tmp_path / "data")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere is not a folder: give the examples/ folder of a Serket checkout" in err
    assert "Traceback" not in err and not (tmp_path / "data").exists()


def test_smoke_prepares_a_miniature_checkout_in_a_temporary_folder(tmp_path, monkeypatch, capsys):
    """``--smoke`` needs no SERKET data: it builds a miniature checkout in a temporary folder, prepares it, prints
    the arrays and files written, and leaves nothing behind."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its temporary folder is made here
    load_example("prepare_serket_data").main(["--smoke"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"SERKET example data written to {tmp_path}/")
    assert lines[0].endswith("/data (a miniature checkout, removed after)")
    assert [line.split() for line in lines[1:]] == [
        ["mnist3000.npz", "image", "float32", "(4,", "784)"], ["mnist3000.npz", "modality2", "float32", "(4,", "2400)"],
        ["mnist3000.npz", "label", "int64", "(4,)"], ["HMM/data.txt"], ["VAE+GMM/category.txt"],
        ["mMLDA/histogram_w.txt"]]
    assert list(tmp_path.iterdir()) == []


def test_smoke_takes_no_folders(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_example("prepare_serket_data").main(["--smoke", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--smoke builds its own miniature checkout in a temporary folder: give no folders" in capsys.readouterr().err
