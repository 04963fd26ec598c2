"""Prepare SERKET's example data for kizuna's SERKET examples (and their tests) from a SERKET checkout.

kizuna does not ship SERKET's example data (they carry no licence to redistribute). Get them from
naka-lab/Serket (its ``examples/`` folder), then::

    python examples/prepare_serket_data.py PATH/TO/Serket/examples DATA_DIR
    python examples/serket_vae_gmm_mlda.py --data DATA_DIR

``DATA_DIR`` then holds what the examples read (see docs/data.md):

* ``mnist3000.npz`` from ``VAE+GMM+MLDA/data.zip``: ``image`` float32 3000×784 (``data1.txt``),
  ``modality2`` float32 3000×2400 (``data2.txt``, HAC features of spoken digits), ``label`` int64 3000
  (``category.txt``);
* ``mMLDA/`` and ``HMM/`` copied as they are; ``VAE+GMM/category.txt`` and ``VAE+GMM+MM/category.txt``.

For the tests, put (or link) ``DATA_DIR`` at ``../shared/data/serket`` beside the repository.

``python examples/prepare_serket_data.py --smoke`` (seconds, CI) prepares a miniature checkout of four random
"digits" built in a temporary folder (`miniature_checkout`) and prints what it wrote; it needs no SERKET data.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import output_folder  # noqa: E402

DIGITS = {"image": ("data1.txt", np.float32), "modality2": ("data2.txt", np.float32),
          "label": ("category.txt", np.int64)}
COPIED = ("mMLDA", "HMM", "VAE+GMM/category.txt", "VAE+GMM+MM/category.txt")


def _digit_files(examples: Path) -> dict[str, bytes]:
    """The three text files of the digits example, from ``VAE+GMM+MLDA/data.zip`` or an unpacked ``data/``."""
    folder = examples / "VAE+GMM+MLDA"
    if (folder / "data.zip").is_file():
        with zipfile.ZipFile(folder / "data.zip") as archive:
            members = {Path(n).name: n for n in archive.namelist()}
            return {f: archive.read(members[f]) for f, _ in DIGITS.values() if f in members}
    unpacked = folder / "data"
    return {f: (unpacked / f).read_bytes() for f, _ in DIGITS.values() if (unpacked / f).is_file()}


def prepare(examples: str | Path, out: str | Path) -> Path:
    """Write ``mnist3000.npz`` and copy the other example folders from SERKET's ``examples`` into ``out``."""
    examples, out = Path(examples), Path(out)
    if not examples.is_dir():
        raise FileNotFoundError(f"{examples} is not a folder: give the examples/ folder of a Serket checkout")
    files = _digit_files(examples)
    missing = [f for f, _ in DIGITS.values() if f not in files]
    if missing:
        raise FileNotFoundError(f"{examples / 'VAE+GMM+MLDA'}: data.zip (or data/) lacks {', '.join(missing)}")
    arrays = {key: np.loadtxt(io.BytesIO(files[name])).astype(dtype) for key, (name, dtype) in DIGITS.items()}
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"data1/data2/category have different numbers of rows: {sorted(n)}")
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "mnist3000.npz", **arrays)
    for name in COPIED:
        source = examples / name
        if source.is_dir():
            shutil.copytree(source, out / name, dirs_exist_ok=True)
        elif source.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / name)
    return out


def miniature_checkout(root: str | Path, zipped: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write at ``root`` the ``examples/`` folder of a Serket checkout, shrunk to four random digits: the digits
    example's three text files (in ``VAE+GMM+MLDA/data.zip`` if ``zipped``, else in ``VAE+GMM+MLDA/data/``) and one
    small file in each of ``mMLDA/``, ``HMM/`` and ``VAE+GMM/``. Returns the arrays written, by `DIGITS` key."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    arrays = {"image": rng.random((4, 784)), "modality2": rng.integers(0, 44, (4, 2400)), "label": np.arange(4)}
    folder = root / "VAE+GMM+MLDA"
    (folder / "data").mkdir(parents=True)
    for key, (name, _) in DIGITS.items():
        np.savetxt(folder / "data" / name, arrays[key])
    if zipped:
        with zipfile.ZipFile(folder / "data.zip", "w") as archive:
            for name, _ in DIGITS.values():
                archive.write(folder / "data" / name, f"data/{name}")
        shutil.rmtree(folder / "data")
    for sub, name in (("mMLDA", "histogram_w.txt"), ("HMM", "data.txt"), ("VAE+GMM", "category.txt")):
        (root / sub).mkdir()
        (root / sub / name).write_text("1 2 3\n")
    return arrays


def smoke() -> None:
    """`prepare` on a `miniature_checkout` in a temporary folder; prints the arrays and files written."""
    with tempfile.TemporaryDirectory() as tmp:
        miniature_checkout(Path(tmp) / "examples")
        written = prepare(Path(tmp) / "examples", Path(tmp) / "data")
        print(f"SERKET example data written to {written} (a miniature checkout, removed after)")
        with np.load(written / "mnist3000.npz") as arrays:
            for key in DIGITS:
                print(f"  mnist3000.npz {key:9s} {arrays[key].dtype} {arrays[key].shape}")
        for path in sorted(p for p in written.rglob("*") if p.is_file() and p.name != "mnist3000.npz"):
            print(f"  {path.relative_to(written)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("examples", nargs="?", help="the examples/ folder of a naka-lab/Serket checkout")
    parser.add_argument("out", nargs="?", type=output_folder,
                        help="the data folder to write (then pass it as --data to the SERKET examples)")
    parser.add_argument("--smoke", action="store_true",
                        help="prepare a miniature checkout built in a temporary folder (seconds; no folders given)")
    args = parser.parse_args(argv)
    if args.smoke:
        if args.examples is not None:
            parser.error("--smoke builds its own miniature checkout in a temporary folder: give no folders")
        smoke()
        return
    if args.out is None:
        parser.error("the following arguments are required: examples, out")
    try:
        written = prepare(args.examples, args.out)
    except (FileNotFoundError, ValueError) as error:  # a wrong folder is the user's, not a bug: no traceback
        parser.error(str(error))
    print(f"SERKET example data written to {written}")


if __name__ == "__main__":
    main()
