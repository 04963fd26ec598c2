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
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("examples", help="the examples/ folder of a naka-lab/Serket checkout")
    parser.add_argument("out", type=output_folder,
                        help="the data folder to write (then pass it as --data to the SERKET examples)")
    args = parser.parse_args(argv)
    try:
        written = prepare(args.examples, args.out)
    except (FileNotFoundError, ValueError) as error:  # a wrong folder is the user's, not a bug: no traceback
        parser.error(str(error))
    print(f"SERKET example data written to {written}")


if __name__ == "__main__":
    main()
