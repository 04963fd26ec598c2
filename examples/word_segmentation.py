"""Unsupervised word segmentation of the Brent corpus with NPYLM (`kizuna.modules.WordSegmenter`).

The Brent corpus (Bernstein-Ratner child-directed speech, phonemic, 9,790 utterances; Brent 1999)
is read from ``../shared/data/brent/br-phono.txt`` (tests and benchmarks only): its spaces are the
true word boundaries, removed before segmenting. Prints boundary and word-token F of the current
Gibbs sample after every sweep and of the Viterbi segmentation at the end, next to the
transitional-probability baseline (64.4 / 46.8) and DPDP AE-RNN (80.9 / 68.5).

    python examples/word_segmentation.py --iters 30 --seed 0
    python examples/word_segmentation.py --smoke
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import non_negative_int, positive_float, positive_int, seed_arg  # noqa: E402

from kizuna.metrics.segmentation import segmentation_scores  # noqa: E402
from kizuna.modules.npylm import NPYLM, gibbs_sweep, temperatures  # noqa: E402
from kizuna.modules.word_segmenter import WordSegmenter  # noqa: E402

BRENT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brent" / "br-phono.txt"


def load_brent(path: Path = BRENT) -> list[list[str]]:
    """The corpus as lists of words (one phoneme a character)."""
    if not path.exists():
        raise FileNotFoundError(f"the Brent corpus is not at {path}: pass --data FILE (docs/data.md, The Brent "
                                "corpus)")
    if path.is_dir():  # (a raw IsADirectoryError; a pipe such as <(head ...) is read as a file)
        raise FileNotFoundError(f"--data {path} is a folder: pass the corpus file itself, e.g. --data "
                                f"{path / 'br-phono.txt'} (docs/data.md, The Brent corpus)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FileNotFoundError(f"--data {path} cannot be read as a text corpus "
                                f"({type(err).__name__}: {err})") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _hyper(model: NPYLM) -> str:
    lam = "" if model.length is None else f"  lambda {model.length.lam:.2f}"
    return (f"word d/theta {model.words.d[0]:.2f}/{model.words.theta[0]:.0f} {model.words.d[1]:.2f}/"
            f"{model.words.theta[1]:.1f}{lam}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=non_negative_int, default=30, help="Gibbs sweeps (default 30)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--max-word-length", type=positive_int, default=10)
    parser.add_argument("--char-order", type=positive_int, default=3)
    parser.add_argument("--anneal", type=positive_float, default=1.0,
                        help="starting temperature, a finite number > 0 (default 1: no annealing)")
    parser.add_argument("--init-length", type=positive_int, default=None,
                        help="start from words of 1..this many phonemes (default: Mochihashi's sequential start)")
    parser.add_argument("--length-correction", action="store_true", help="Poisson word-length correction")
    parser.add_argument("--data", type=Path, default=BRENT, help="br-phono.txt (default ../shared/data/brent/)")
    parser.add_argument("--first", type=positive_int, default=None, help="only the first this many utterances")
    parser.add_argument("--smoke", action="store_true", help="500 utterances, 3 sweeps")
    args = parser.parse_args(argv)
    try:
        gold = load_brent(args.data)
    except FileNotFoundError as err:
        parser.error(str(err))
    iters = args.iters
    if args.first is not None:
        gold = gold[:args.first]
    if args.smoke:
        gold, iters = gold[:500], 3
    utterances = ["".join(words) for words in gold]
    seg = WordSegmenter(args.max_word_length, args.char_order, n_iter=0, init_length=args.init_length,
                        length_correction=args.length_correction, random_state=args.seed).fit(utterances)
    rng = np.random.default_rng(args.seed + 1)
    start = time.perf_counter()
    stop = []  # SIGTERM ends the run after the current sweep, with the Viterbi scores
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    for it, temperature in enumerate(temperatures(iters, args.anneal)):
        if stop:
            print(f"stopped by SIGTERM after {it} sweeps", flush=True)
            break
        gibbs_sweep(seg.model_, seg.utterances_, seg.segmentation_, rng, temperature=temperature)
        s = segmentation_scores(gold, seg.segmentation_)
        print(f"sweep {it + 1:3d}  T {temperature:4.2f}  {time.perf_counter() - start:7.1f}s  "
              f"boundary F {100 * s.boundary_f:5.1f} (P {100 * s.boundary_precision:4.1f} "
              f"R {100 * s.boundary_recall:4.1f})  token F {100 * s.token_f:5.1f}  "
              f"lexicon F {100 * s.lexicon_f:5.1f}  {_hyper(seg.model_)}", flush=True)
    final = segmentation_scores(gold, seg.segment(utterances))
    print(f"Viterbi: boundary P/R/F {100 * final.boundary_precision:.1f}/{100 * final.boundary_recall:.1f}/"
          f"{100 * final.boundary_f:.1f}  token P/R/F {100 * final.token_precision:.1f}/"
          f"{100 * final.token_recall:.1f}/{100 * final.token_f:.1f}  lexicon F {100 * final.lexicon_f:.1f}")
    print("baselines: transitional probabilities 64.4 / 46.8, DPDP AE-RNN 80.9 / 68.5 (boundary F / token F)")
    return {"boundary_f": final.boundary_f, "token_f": final.token_f}


if __name__ == "__main__":
    main()
