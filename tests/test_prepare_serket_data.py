"""examples/prepare_serket_data.py turns a SERKET checkout's examples/ into the folder kizuna's SERKET
examples read (``--data``): checked on a miniature checkout built here, value for value."""

import zipfile

import numpy as np
import pytest
from example_loader import load_example


def _miniature_serket(root, zipped=True):
    """examples/ of a Serket checkout, 4 digits: data.zip (data1/data2/category), mMLDA/, HMM/, VAE+GMM/."""
    rng = np.random.default_rng(0)
    image, speech, label = rng.random((4, 784)), rng.integers(0, 44, (4, 2400)), np.arange(4)
    texts = {"data1.txt": image, "data2.txt": speech, "category.txt": label}
    folder = root / "VAE+GMM+MLDA"
    folder.mkdir(parents=True)
    if zipped:
        with zipfile.ZipFile(folder / "data.zip", "w") as archive:
            for name, values in texts.items():
                path = root / name
                np.savetxt(path, values)
                archive.write(path, f"data/{name}")
    else:
        (folder / "data").mkdir()
        for name, values in texts.items():
            np.savetxt(folder / "data" / name, values)
    for sub, name in (("mMLDA", "histogram_w.txt"), ("HMM", "data.txt"), ("VAE+GMM", "category.txt")):
        (root / sub).mkdir()
        (root / sub / name).write_text("1 2 3\n")
    return image, speech, label


@pytest.mark.parametrize("zipped", [True, False])
def test_prepare_writes_the_arrays_the_examples_read(tmp_path, zipped):
    image, speech, label = _miniature_serket(tmp_path / "examples", zipped)
    out = load_example("prepare_serket_data").prepare(tmp_path / "examples", tmp_path / "data")
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
