r"""The blocked collapsed Gibbs sampler of multimodal LDA: `GibbsChain`, self-contained.

Each sample :math:`d` (a "document", e.g. an object) has topic proportions
:math:`\theta_d \sim \mathrm{Dir}(\alpha)`; every token :math:`i` of every modality :math:`m` (bag of
visual / haptic / word features, or of a child module's classes) draws a topic
:math:`z_i \sim \theta_d` and a feature :math:`w_i \sim \phi^m_{z_i}`, :math:`\phi^m_k \sim \mathrm{Dir}(\beta)`
(Nakamura et al. 2009, "Grounding of word meanings in multimodal concepts using LDA"; one modality:
Blei et al. 2003). Integrating out :math:`\theta, \phi` gives the collapsed conditional
(Griffiths & Steyvers 2004), times the parent's class prior :math:`\pi_{dk}` (SERKET's bias):

.. math::
    p(z_i = k | z_{-i}, w) \propto \pi_{d k}\,(n^{-i}_{dk} + \alpha)\,
        \frac{n^{-i}_{k w_i, m} + \beta}{n^{-i}_{k, m} + V_m \beta}

**The sweep** (what "vectorised" means here precisely): each sweep visits the tokens of all
modalities in a fresh random order split into ``n_blocks`` blocks. All tokens of a block are
resampled at once, each from the conditional above with the counts of the state *before the
block* minus its own assignment; the count tables are then updated and the next block sees them.
(Inside a block the draws are simultaneous, so when the document-topic table outgrows the cache the
block's tokens are taken in storage order, document by document, each with the uniform it would have
had: the same draws, with the table read in order.)
With one token per block this is exact random-scan collapsed Gibbs; with fewer, larger blocks it is
the approximate-distributed-LDA scheme (Newman et al. 2009, JMLR 10:1801, "AD-LDA"), whose staleness
is one block. Estimates :math:`\hat\theta, \hat\phi` are averaged over the second half of the sweeps.

**Backends** (`kizuna.modules._backend`): `_torch_sweep` runs a block as a few tensor operations;
`numba_sweep` runs the same sweep as a compiled loop (`kizuna.modules._numba_kernels.gibbs_sweep`), from the
same random numbers (`_sweep_numbers`) and in the same floating-point operations: the same chain, draw for
draw. Compiled, a block costs nothing extra, so one token per block (the exact sequential sampler) is cheap.

`as_counts` turns a modality into integer counts with SERKET's weights: with ``weight`` the counts of each
sample are rescaled to sum to ``weight`` (a child's class posterior :math:`p(c_d=j)` becomes ``weight``
class-word tokens), then made integer (rounded by default; SERKET's floor or largest remainders on
request). Restarts, the estimator and the graph node are built on this file
(`kizuna.modules.lda.algorithms`, ``.estimator``, ``.node``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kizuna._data import one_number
from kizuna.modules.gmm.normal_wishart import row_blocks
from kizuna.modules.validation import as_tensor, check_finite

Tensor = torch.Tensor
ROUNDINGS = ("round", "floor", "largest_remainder")
SORT_ABOVE = 1 << 20  # document-topic tables larger than this (elements) outgrow the cache: read them in order


def as_counts(x: Any, weight: float | None, what: str, rounding: str = "round") -> Tensor:
    """Integer counts (N×V long) from a count / probability matrix, rescaled to ``weight`` per row.

    Args:
        x: counts or probabilities N×V, finite and non-negative.
        weight: tokens per row (SERKET's modality weight), or None to keep ``x``'s own totals (rounded).
        what: a name for error messages.
        rounding: how the rescaled rows become integers (`kizuna.modules.mlda_evidence` compares them):
            ``"round"``; ``"floor"`` (SERKET's ``int32`` cast: a row keeps fewer than ``weight`` tokens);
            ``"largest_remainder"`` (exactly ``weight`` tokens a row: the floors, then one more token for each
            of the largest remainders).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"{what}: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    t = as_tensor(x, "counts", what)
    if t.dim() != 2:
        raise ValueError(f"{what}: counts must be N x V, got shape {tuple(t.shape)}. Reshape your data with "
                         "x.reshape(1, -1) for one sample")
    # Memory: at most about two N×V copies of the input at once (were four to five: a float64 copy of integer counts
    # and four float temporaries for the whole-number check). ``owned``: ``t`` is this function's own copy
    # (`as_tensor` copies arrays, not tensors), so it may be changed in place.
    owned = not isinstance(x, Tensor)
    if not t.is_floating_point():  # integer or boolean counts: finite and whole already, no floating copy
        if bool((t < 0).any()):
            _negative(t, what)
        if weight is None:
            counts = t.long()
            return counts.clone() if counts is t and not owned else counts  # never the caller's own storage
        t, owned = t.double(), True
    else:
        check_finite(t, "counts", what)
        if bool((t < 0).any()):
            _negative(t, what)
    if weight is None:  # counts as given, rounded to whole tokens: said when that changes them (0.3 became no token,
        # silently: a row of probabilities scored as an empty document, a matrix of them trained on a token or two)
        whole = torch.round(t)
        off = None if torch.equal(t, whole) else (t - whole).abs() > 1e-6 * whole.abs().clamp_min(1.0)
        if off is not None and bool(off.any()):
            row, col = (int(i) for i in off.nonzero()[0])
            kept = float(whole.sum() / t.sum()) if bool(t.sum() > 0) else 1.0
            warnings.warn(f"{what}: counts are whole numbers of tokens; {int(off.sum())} entries are not (e.g. "
                          f"{float(t[row, col]):.4g} at row {row}, column {col}) and are rounded, keeping "
                          f"{100 * kept:.0f}% of the total; for probabilities or other weights give weight= (tokens "
                          "per row), which rescales every row to that many tokens", UserWarning, stacklevel=3)
        del t, off
        return whole.long()
    # rescaled in float64 whatever the input's precision, as `token_counts` does (in place on a copy of our own)
    double = t.double()
    t = _rescaled(double if owned or double is not t else double.clone(), weight, what, in_place=True)
    if rounding == "round":
        return t.round_().long()
    if rounding == "floor":
        return t.floor_().long()
    # a block of rows at a time (`row_blocks`): the sort's values and long indices were three more N×V copies
    counts, columns = torch.empty(t.shape, dtype=torch.long, device=t.device), torch.arange(t.shape[1], device=t.device)
    blocks = row_blocks(t.shape[0], t.shape[1])
    for s in blocks:
        rows = t[s:s + blocks.step]
        low = torch.floor(rows)
        missing = (rows.sum(1) - low.sum(1)).round().long()  # the tokens the floors left out, per row
        order = torch.argsort(rows.sub_(low), dim=1, descending=True, stable=True)
        counts[s:s + blocks.step] = low.long().scatter_add_(1, order, (columns < missing[:, None]).long())
    return counts


def _negative(t: Tensor, what: str) -> None:
    """Raise the error for negative counts in ``t``, naming the first one."""
    row, col = (int(i) for i in (t < 0).nonzero()[0])
    raise ValueError(f"{what}: Negative values in data: counts must be non-negative, got "
                     f"{float(t[row, col]):.4g} at row {row}, column {col}")


def _rescaled(t: Tensor, weight: float, what: str, in_place: bool = False) -> Tensor:
    """Rows rescaled to sum to ``weight``, :math:`(x_{nv} / \\sum_u x_{nu})\\,w` (a zero row stays zero); with
    ``in_place`` written into ``t`` (the same numbers, no N×V temporary)."""
    # (NaN fails the comparison; inf gave negative token counts; a string such as "10" raised a raw TypeError)
    weight = one_number(weight)  # (a tensor or array of one number, as before the check)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"{what}: the weight must be positive and finite, got {weight!r}")
    sums = t.sum(1, keepdim=True)
    sums = torch.where(sums > 0, sums, torch.ones_like(sums))
    return t.div_(sums).mul_(weight) if in_place else t / sums * weight


def _draw(p: Tensor, generator: torch.Generator | None, u: Tensor | None = None) -> Tensor:
    """One category per row of the unnormalised probabilities ``p`` (inverse CDF): the number of
    cumulative sums at or below :math:`u \\sum_k p_k`, found by binary search (no N×K comparison).
    ``u``: the uniforms (N×1), when drawn by the caller. The target is kept below the total (a product
    :math:`u \\sum_k p_k` may round up to it), so a category of zero probability at the end is never drawn."""
    cdf = p.cumsum(1)
    if u is None:
        u = torch.rand(p.shape[0], 1, generator=generator, dtype=p.dtype, device=p.device)
    total = cdf[:, -1:]
    target = torch.minimum(u.to(p.dtype) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(p.shape[1] - 1)


def _sweep_numbers(n: int, dtype: torch.dtype, device: torch.device,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A sweep's random numbers, the same on both backends: a uniform permutation of the n tokens, then one
    uniform per token (n×1; torch's CPU stream gives the same numbers as one draw per block)."""
    order = torch.randperm(n, generator=generator, device=device)
    return order, torch.rand(n, 1, generator=generator, dtype=dtype, device=device)


def _sweep_draws(n: int, n_blocks: int, in_order: bool, dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor, list[int]]:
    """A sweep's blocks: a fresh random order of the n tokens cut into ``n_blocks`` consecutive blocks, as (the
    tokens block after block (n,), one uniform per token (n×1), the block sizes); see `_sweep_numbers`.

    ``in_order``: each block's tokens in storage order. A token's place in the random order is :math:`\\pi_i`
    (a uniform permutation), its block :math:`\\lfloor \\pi_i B / n \\rfloor`; one stable sort of these small
    labels lists every block's tokens in storage order at once (the same blocks in law as sorting each block)."""
    b = max(1, min(n_blocks, n))
    order, u = _sweep_numbers(n, dtype, device, generator)
    if not in_order:
        return order, u, [n // b + 1] * (n % b) + [n // b] * (b - n % b)  # torch.tensor_split's sizes
    label = order.mul_(b).div_(n, rounding_mode="floor").to(torch.uint8 if b < 256 else torch.int32)
    return torch.sort(label, stable=True).indices, u, torch.bincount(label, minlength=b).tolist()


def _blocks(n: int, n_blocks: int, in_order: bool, dtype: torch.dtype, device: torch.device,
            generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]:
    """A sweep's blocks (see `_sweep_draws`), each as (token indices, one uniform per token (R×1))."""
    order, u, sizes = _sweep_draws(n, n_blocks, in_order, dtype, device, generator)
    yield from zip(order.split(sizes), u.split(sizes))


@dataclass
class Tables:
    """The chain's tokens (T,) and count tables during `GibbsChain.run`: each token's sample ``doc``, joint
    vocabulary row ``word``, modality ``mod`` and topic ``z``; counts ``n_dk`` (N×K), ``n_wk`` (ΣV×K), ``n_mk``
    (M×K); ``vbeta`` (M×1) :math:`V_m\\beta`; ``vocab_mod`` (ΣV,) each row's modality; the class prior ``bias``
    (N×K or None); fixed topics ``phi`` (ΣV×K, or None to learn them)."""

    doc: Tensor
    word: Tensor
    mod: Tensor
    z: Tensor
    n_dk: Tensor
    n_wk: Tensor
    n_mk: Tensor
    vbeta: Tensor
    vocab_mod: Tensor
    bias: Tensor | None
    phi: Tensor | None


def _torch_sweep(t: Tables, n_blocks: int, in_order: bool, generator: torch.Generator | None, alpha: float,
                 beta: float) -> None:
    """One sweep in place, a block (`_sweep_draws`) at a time: the block's conditionals from the counts before
    it, its draws from its uniforms, then its moves in the counts."""
    order, u, sizes = _sweep_draws(t.doc.shape[0], n_blocks, in_order, t.n_dk.dtype, t.n_dk.device, generator)
    k, bias, phi, n_dk, n_wk, n_mk = t.n_dk.shape[1], t.bias, t.phi, t.n_dk, t.n_wk, t.n_mk
    for idx, uu in zip(order.split(sizes), u.split(sizes)):
        d, w, m, old = (x.index_select(0, idx) for x in (t.doc, t.word, t.mod, t.z))
        # the conditional with every count, then each token's own topic corrected for its removal
        doc_tab = n_dk + alpha if bias is None else (n_dk + alpha) * bias
        word_tab = phi if phi is not None else (n_wk + beta) / (n_mk + t.vbeta).index_select(0, t.vocab_mod)
        own = n_dk.take(d * k + old) - 1 + alpha
        own = own if bias is None else own * bias.take(d * k + old)
        own = own * (word_tab.take(w * k + old) if phi is not None else
                     (n_wk.take(w * k + old) - 1 + beta) / (n_mk.take(m * k + old) - 1 + t.vbeta.take(m)))
        # the block's draws a slice of its tokens at a time (`row_blocks`: a block's R×K tables were, with one
        # block, as large as the count matrix); each token's row is its own: the same draws
        new, rows = torch.empty_like(old), row_blocks(d.shape[0], k)
        for s in rows:
            e = s + rows.step
            p = doc_tab.index_select(0, d[s:e]).mul_(word_tab.index_select(0, w[s:e]))
            p.scatter_(1, old[s:e, None], own[s:e, None])
            new[s:e] = _draw(p, None, uu[s:e])
        t.z.index_copy_(0, idx, new)
        sign = torch.ones(2 * d.shape[0], dtype=n_dk.dtype, device=n_dk.device)
        sign[: d.shape[0]] = -1
        kk = torch.cat([old, new])
        n_dk.view(-1).index_add_(0, torch.cat([d, d]) * k + kk, sign)
        if phi is None:
            n_wk.view(-1).index_add_(0, torch.cat([w, w]) * k + kk, sign)
            n_mk.view(-1).index_add_(0, torch.cat([m, m]) * k + kk, sign)


def numba_sweep(t: Tables, n_blocks: int, in_order: bool, generator: torch.Generator | None, alpha: float,
                beta: float) -> None:
    """`_torch_sweep` by the compiled loop `kizuna.modules._numba_kernels.gibbs_sweep`, from the same random
    numbers (`_sweep_numbers`; the kernel forms the same blocks). CPU tensors; the arrays are shared with the
    tensors, so ``t.z`` and the counts are updated in place."""
    from kizuna.modules import _numba_kernels

    order, u = _sweep_numbers(t.doc.shape[0], t.n_dk.dtype, t.n_dk.device, generator)
    dt, k = t.n_dk.numpy().dtype, t.n_dk.shape[1]
    none = np.empty((0, k), dtype=dt)
    bias = none if t.bias is None else t.bias.numpy()
    phi = none if t.phi is None else np.ascontiguousarray(t.phi.numpy(), dtype=dt)
    _numba_kernels.gibbs_sweep(t.doc.numpy(), t.word.numpy(), t.mod.numpy(), t.z.numpy(), order.numpy(),
                               u.view(-1).numpy(), max(1, min(n_blocks, t.doc.shape[0])), in_order, t.n_dk.numpy(),
                               t.n_wk.numpy(), t.n_mk.numpy(), t.vbeta.view(-1).numpy(), t.vocab_mod.numpy(), bias,
                               phi, np.array([alpha, beta, 1.0, 0.0], dtype=dt))


class GibbsChain:
    """Token arrays and count tables of the collapsed Gibbs sampler over M modalities.

    Args:
        n_docs: N; sizes: vocabulary size V_m per modality; n_topics: K.
        alpha, beta: symmetric Dirichlet concentrations; dtype/device: of the count tables.
    """

    def __init__(self, n_docs: int, sizes: Sequence[int], n_topics: int, alpha: float, beta: float,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.n, self.sizes, self.k, self.alpha, self.beta = n_docs, list(sizes), n_topics, alpha, beta
        self.dtype, self.device = dtype, device
        self.offsets = [0, *np.cumsum(self.sizes).tolist()]
        self.counts: list[Tensor | None] = [None] * len(self.sizes)
        self.docs: list[Tensor] = [torch.zeros(0, dtype=torch.long, device=device)] * len(self.sizes)
        self.words, self.z = list(self.docs), list(self.docs)

    def set_counts(self, m: int, counts: Tensor | None, theta: Tensor | None, phi: Tensor | None,
                   generator: torch.Generator | None) -> None:
        """Tokens of modality m from ``counts`` (None: missing). New tokens draw their topic with
        probability :math:`\\propto \\theta_{dk}\\phi_{wk}` (``theta`` N×K, ``phi`` V_m×K; a missing factor is
        uniform); the tokens of unchanged counts keep their topics."""
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        if counts is None:
            self.counts[m], self.docs[m], self.words[m], self.z[m] = None, empty, empty, empty
            return
        if self.counts[m] is not None and torch.equal(self.counts[m], counts):
            return
        nz = counts.nonzero()
        reps = counts[nz[:, 0], nz[:, 1]]
        doc, word = nz[:, 0].repeat_interleave(reps), nz[:, 1].repeat_interleave(reps)
        del nz, reps
        # the draws a block of tokens at a time (`row_blocks`): a T×K table of probabilities was as large as the
        # count matrix (100 tokens a document, K=50, 5,000 words) and made three times. One uniform per token drawn
        # first, as `_draw` draws them; each row's cumulative sums are its own: the same topics.
        u = torch.rand(doc.shape[0], 1, generator=generator, dtype=self.dtype, device=self.device)
        theta = None if theta is None else theta.to(self.dtype)
        phi = None if phi is None else phi.to(self.dtype)
        z = torch.empty_like(doc)
        blocks = row_blocks(doc.shape[0], self.k)
        for s in blocks:
            d, w = doc[s:s + blocks.step], word[s:s + blocks.step]
            p = (torch.ones(d.shape[0], self.k, dtype=self.dtype, device=self.device) if theta is None
                 else theta.index_select(0, d))  # (1 · x is x)
            p = p if phi is None else p.mul_(phi.index_select(0, w))
            z[s:s + blocks.step] = _draw(p, None, u[s:s + blocks.step])
        self.counts[m], self.docs[m], self.words[m], self.z[m] = counts, doc, word, z

    def run(self, n_sweeps: int, n_blocks: int, prior: Tensor | None, phi: Tensor | None,
            generator: torch.Generator | None, backend: str = "torch") -> tuple[Tensor, Tensor]:
        """``n_sweeps`` sweeps; returns (θ̂ N×K, φ̂ ΣV×K) averaged over the second half.

        With ``phi`` (ΣV×K) the topics are held fixed (inference for new samples); otherwise learnt.
        ``backend``: ``"torch"`` (`_torch_sweep`) or ``"numba"`` (`kizuna.modules._numba_kernels.gibbs_sweep`,
        CPU only): the same chain, draw for draw, from the same random numbers of ``generator``.
        """
        doc, z = torch.cat(self.docs), torch.cat(self.z)
        mod = torch.cat([torch.full_like(d, m) for m, d in enumerate(self.docs)])
        word = torch.cat([w + self.offsets[m] for m, w in enumerate(self.words)])
        vocab_mod = torch.repeat_interleave(torch.arange(len(self.sizes), device=self.device),
                                            torch.tensor(self.sizes, device=self.device))
        vbeta = torch.tensor(self.sizes, dtype=self.dtype, device=self.device)[:, None] * self.beta
        ones = torch.ones(doc.shape[0], dtype=self.dtype, device=self.device)
        n_dk = torch.zeros(self.n, self.k, dtype=self.dtype, device=self.device).index_put_((doc, z), ones, True)
        n_wk = torch.zeros(self.offsets[-1], self.k, dtype=self.dtype, device=self.device)
        n_wk.index_put_((word, z), ones, True)
        n_mk = torch.zeros(len(self.sizes), self.k, dtype=self.dtype, device=self.device).index_add_(0, vocab_mod, n_wk)
        bias = prior.to(self.dtype).contiguous() if prior is not None else None
        tab = Tables(doc, word, mod, z, n_dk, n_wk, n_mk, vbeta, vocab_mod, bias, phi)
        one_sweep = numba_sweep if backend == "numba" else _torch_sweep
        theta_sum, phi_sum, kept = torch.zeros_like(n_dk), torch.zeros_like(n_wk), 0
        in_order = n_dk.numel() > SORT_ABOVE
        for sweep in range(n_sweeps):
            one_sweep(tab, n_blocks, in_order, generator, self.alpha, self.beta)
            if 2 * sweep >= n_sweeps - 1:
                theta_sum += (n_dk + self.alpha) / (n_dk.sum(1, keepdim=True) + self.k * self.alpha)
                if phi is None:
                    phi_sum += (n_wk + self.beta) / (n_mk + vbeta).index_select(0, vocab_mod)
                kept += 1
        self.z = list(z.split([d.shape[0] for d in self.docs]))
        if kept == 0:  # no sweep: the estimates of the current state
            theta_sum, kept = (n_dk + self.alpha) / (n_dk.sum(1, keepdim=True) + self.k * self.alpha), 1
            if phi is None:
                phi_sum = (n_wk + self.beta) / (n_mk + vbeta)[vocab_mod]
        return theta_sum / kept, (phi_sum / kept if phi is None else phi)
