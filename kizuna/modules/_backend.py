"""Which implementation runs a module's sequential inner loop: pure torch or an optional compiled (numba) one.

Two loops of the classical modules are sequential by nature and cost one Python-dispatched tensor operation per
small step in torch: the Viterbi recursion of `HMM` and the collapsed Gibbs sweep of `LDA` / `MLDA`. With the
optional extra ``kizuna[fast]`` (numba) they run as compiled loops (`kizuna.modules._numba_kernels`) that compute
the same answers: the same Viterbi path and score wherever one path is the most probable (between exactly tied paths
the numba loop keeps the first maximum, as hmmlearn, and torch's chunked recursions may return another tied path;
see `kizuna.modules.hmm.viterbi`), and the same Gibbs chain draw for draw (the sweep's random numbers are drawn from
the module's torch generator beforehand and passed in).

``backend`` is ``"auto"`` (numba when it imports and the tensors are on the CPU, else torch), ``"torch"`` or
``"numba"`` (an error naming the extra when numba is not installed).
"""

from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "torch", "numba")
INSTALL = "pip install 'kizuna[fast]'"


@functools.cache
def numba_available() -> bool:
    """Whether numba imports (tried once, when a backend is first resolved)."""
    try:
        import numba  # noqa: F401
    except Exception:  # absent, or installed but broken (e.g. against an unsupported numpy): torch stays usable
        return False
    return True


def check_backend(backend: str, owner: str) -> None:
    """Raise a ValueError naming ``owner`` unless ``backend`` is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, owner: str, device: torch.device | str = "cpu") -> str:
    """``"torch"`` or ``"numba"`` for a run on ``device``.

    Raises:
        ValueError: an unknown ``backend``, or ``"numba"`` for tensors off the CPU.
        ImportError: ``"numba"`` when numba is not installed (the message names the extra).
    """
    check_backend(backend, owner)
    on_cpu = torch.device(device).type == "cpu"
    if backend == "numba":
        if not numba_available():
            raise ImportError(f"{owner}: backend='numba' needs numba, which is not installed: {INSTALL} "
                              "(the optional extra 'fast'), or use backend='torch'")
        if not on_cpu:
            raise ValueError(f"{owner}: backend='numba' runs on CPU tensors, got tensors on {device}; "
                             "use backend='torch' (or 'auto')")
        return "numba"
    if backend == "torch":
        return "torch"
    return "numba" if on_cpu and numba_available() else "torch"
