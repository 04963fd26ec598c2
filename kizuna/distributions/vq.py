r"""VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) as distributions: a quantiser and a PixelCNN prior.

* `VectorQuantizer` — :math:`q(k, z|x)`: an encoder gives :math:`z_e(x)` on a grid of positions; each
  position takes its nearest codebook vector, :math:`k = \arg\min_j \|z_e - e_j\|`, and
  :math:`z = z_e + \mathrm{sg}[e_k - z_e]` (value :math:`e_k`, gradient straight through to the
  encoder). A point mass: :math:`\log q(k, z|x) = 0` at its code and its vector, :math:`(k(x), e_{k(x)})`
  (``z`` compared with :math:`e_k` to rounding), :math:`-\infty` elsewhere; ``sum_features=False`` gives one
  value per grid position. Codes are one-hot (as `Categorical`'s draws), shape ``(batch, *grid, K)``; ``z`` is
  ``(batch, D, *grid)``.
* `PixelCNNCategorical` — :math:`p(k) = \prod_{i} p(k_i|k_{<i})` over the code grid in raster order,
  a `kizuna.nets.PixelCNN` with one-hot codes in and ``K`` logits out per position.

Since :math:`q` is a point mass, :math:`\log p(x) \ge \log p(x|z(k)) + \log p(k)` with :math:`k = k(x)`:
a code length for the data (`kizuna.losses.VQCommitment` is the training term of the codebook).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_count, computing_dtype, first_nonfinite
from kizuna._distances import squared_distances
from kizuna.distributions.base import Distribution, Tensor, XDict, draws_as_rows, sum_rows
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.formula.memo import memoized
from kizuna.nets.pixelcnn import PixelCNN


class VectorQuantizer(Distribution):
    """:math:`q(k, z|x)` (module docstring).

    A 16-bit model (``.half()`` / ``.to(torch.bfloat16)``) searches the nearest codes in float32 (`encode`); its
    :math:`z_e`, :math:`e_k` and draws stay in its dtype.

    Args:
        encoder: ``x -> z_e`` of shape ``(batch, D, *grid)`` (channels first).
        n_codes, code_dim: :math:`K` and :math:`D`.
        var: the names of the codes ``k`` (one-hot, ``(batch, *grid, K)``) and of :math:`z`.
    """

    def __init__(self, encoder: nn.Module, n_codes: int, code_dim: int, var: Sequence[str] = ("k", "z"),
                 cond_var: str = "x", name: str = "q") -> None:
        check_count("VectorQuantizer: n_codes", n_codes, 1)
        check_count("VectorQuantizer: code_dim", code_dim, 1)
        n_codes, code_dim = int(n_codes), int(code_dim)
        super().__init__(list(var), [cond_var], name)
        if len(self._var) != 2:
            raise ValueError(f"VectorQuantizer: var names the codes and the embedding, got {self._var}")
        self.encoder, self.codebook = encoder, nn.Embedding(n_codes, code_dim)
        self.codebook.weight.data.uniform_(-1 / n_codes, 1 / n_codes)

    @property
    def has_reparam(self) -> bool:
        return True  # straight-through

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:math:`z_e`, the code indices :math:`k` ``(batch, *grid)`` and :math:`e_k` (channels first).

        Within one evaluation of a loss, once per input: the draw of ``(k, z)`` and `VQCommitment`'s terms
        share one encoding (one encoder pass and one nearest-code search, as a hand-written step makes)."""
        return memoized(self, "encode", [x], self._encode, x)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_e = self.encoder(x)
        if z_e.dim() < 3 or z_e.shape[1] != self.codebook.embedding_dim:
            raise ValueError(f"{self.prob_text}: the encoder must return (batch, {self.codebook.embedding_dim}, "
                             f"*grid), got {tuple(z_e.shape)}")
        if validation_enabled():  # (a NaN vector was given code 0, its argmin over NaN distances, silently)
            bad = first_nonfinite({"z_e": z_e}, "the encoder's output")
            if bad is not None:
                raise ValueError(f"{self.prob_text}: {bad}; nothing to quantise")
        # the nearest code of each position from the (positions, K) matrix of squared distances, rows and codes
        # centred on the codebook's mean (`squared_distances`: a non-finite position, unchecked, then spoils its own
        # row only, where the joint mean made every row NaN); the differences to every code, (batch, *grid, K, D),
        # took 517 MiB and about 1 s for a CIFAR-sized latent (32 x 8 x 8 positions, K = 512, D = 64). No gradient
        # flows through the choice; ties go to the lowest index (argmin's first), as before. A 16-bit model searches
        # in float32 (`computing_dtype`; its z_e and codes lifted exactly): CPU torch has no half-precision cdist
        # ("cdist" not implemented for 'BFloat16'), and 16-bit distances round near codes together; z_e and e_k stay
        # in the model's dtype.
        flat = z_e.detach().movedim(1, -1)
        codes = self.codebook.weight.detach()
        dtype = computing_dtype(torch.promote_types(flat.dtype, codes.dtype))  # (mixed dtypes: the differences')
        codes = codes.to(dtype)
        d2 = squared_distances(flat.reshape(-1, flat.shape[-1]).to(dtype), codes, centre=codes.mean(0))
        k = d2.argmin(1).reshape(flat.shape[:-1])
        return z_e, k, self.codebook(k).movedim(-1, 1)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        z_e, k, e = self.encode(x_dict[self._cond_var[0]])
        one_hot = F.one_hot(k, self.codebook.num_embeddings).to(z_e.dtype)
        return {self._var[0]: one_hot, self._var[1]: z_e + (e - z_e).detach()}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        z_e, k, e = self.encode(x_dict[self._cond_var[0]])
        given = x_dict[self._var[0]]
        want = (*k.shape, self.codebook.num_embeddings)
        # (one-hots over another number of codes gave -inf everywhere, other shapes a raw broadcast error, and a row
        # of zeros was read as code 0)
        if not isinstance(given, Tensor) or tuple(given.shape) != want:
            shape = tuple(given.shape) if isinstance(given, Tensor) else type(given).__name__
            raise ValueError(f"{self.prob_text}: {self._var[0]} must be one-hot codes of shape {want} (batch, *grid, "
                             f"n_codes) for this {self._cond_var[0]}, got {shape}")
        if validation_enabled() and not bool(((given == 0) | (given == 1)).all() & (given.sum(-1) == 1).all()):
            raise ValueError(f"{self.prob_text}: {self._var[0]} must be one-hot over its last dimension (one 1 per "
                             "position, zeros elsewhere)")
        z = x_dict[self._var[1]]
        if not isinstance(z, Tensor) or z.shape != e.shape:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{self.prob_text}: {self._var[1]} must be the codes' vectors of shape {tuple(e.shape)} "
                             f"(batch, code_dim, *grid) for this {self._cond_var[0]}, got {shape}")
        # the point mass at (k(x), e_k) per position (z was not compared: any z scored 0 with the right code); z is
        # e_k to rounding: the sampler's z_e + (e_k - z_e) rounds twice, at most eps (|z_e| + |e_k|) per entry
        eps = max(torch.finfo(e.dtype).eps, torch.finfo(z.dtype).eps if z.is_floating_point() else 0.0)
        e, z_e = e.detach(), z_e.detach()
        at_code = ((z.detach().to(e.dtype) - e).abs() <= 4 * eps * (z_e.abs() + e.abs())).all(1)
        same = (k == given.argmax(-1)) & at_code  # (batch, *grid)
        out = torch.zeros(same.shape, dtype=z_e.dtype, device=k.device).masked_fill(~same, -torch.inf)
        return sum_rows(out) if sum_features else out


class PixelCNNCategorical(Distribution):
    """:math:`p(k) = \\prod_i \\mathrm{Cat}(k_i; \\pi_i(k_{<i}))` over a ``height × width`` grid of ``n_codes``.

    Values are one-hot, ``(batch, height, width, n_codes)``.

    >>> p = PixelCNNCategorical(3, 2, 2, hidden_channels=8, n_layers=1)
    >>> p.sample(batch_n=4)["k"].shape
    torch.Size([4, 2, 2, 3])
    """

    def __init__(self, n_codes: int, height: int, width: int, hidden_channels: int = 64, n_layers: int = 5,
                 kernel_size: int = 5, var: str = "k", name: str = "p") -> None:
        for arg, value in [("n_codes", n_codes), ("height", height), ("width", width)]:
            check_count(f"PixelCNNCategorical: {arg}", value, 1)
        super().__init__([var], None, name, (height, width, n_codes))
        self.n_codes = int(n_codes)
        self.net = PixelCNN(n_codes, hidden_channels, n_layers, kernel_size, out_channels=n_codes)

    def logits(self, k: Tensor) -> Tensor:
        """``(batch, K, H, W)`` logits of every position given the one-hot codes before it."""
        return self.net(k.movedim(-1, 1).to(self.net.conv_in.weight.dtype))

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        value = x_dict[self._var[0]]
        if not isinstance(value, Tensor):
            raise TypeError(f"{self.prob_text}: {self._var[0]} must be a torch.Tensor, got {type(value).__name__}")
        # draws made with a sample_shape, (*sample_shape, batch, H, W, K), as rows, scored per draw (every family's
        # convention: one value per entry of the first dimension; they were refused as codes of the wrong shape)
        k, _, shape = draws_as_rows(value, x_dict, self._features_shape, ())
        if k.shape[1:] != self._features_shape:
            features = ", ".join(map(str, self._features_shape))
            raise ValueError(f"{self.prob_text}: codes of shape {tuple(k.shape)}, expected (batch, {features}) "
                             f"(one-hot), or (*sample_shape, batch, {features}) for draws made with a sample_shape")
        if validation_enabled() and not bool(((k == 0) | (k == 1)).all() & (k.sum(-1) == 1).all()):
            # (a row of zeros was read as code 0, several ones or NaN as their argmax, silently)
            raise ValueError(f"{self.prob_text}: {self._var[0]} must be one-hot over its last dimension (one 1 per "
                             "position, zeros elsewhere)")
        out = -F.cross_entropy(self.logits(k), k.argmax(-1), reduction="none")
        if shape is not None:
            out = out.reshape(*shape, *out.shape[1:])
        return sum_rows(out) if sum_features else out

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        h, w, n = self._features_shape
        weight = self.net.conv_in.weight
        k = torch.zeros(1 if batch_n is None else batch_n, h, w, n, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            for i in range(h):
                for j in range(w):
                    probs = torch.softmax(self.logits(k)[:, :, i, j], -1)
                    k[:, i, j] = F.one_hot(torch.multinomial(probs, 1)[:, 0], n).to(k.dtype)
        return {self._var[0]: k}
