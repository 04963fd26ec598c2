r"""`Preprocess`: uniform dequantisation followed by a logit, for images with ``levels`` grey levels.

Input pixels lie on the grid :math:`x = k/(L-1)`, :math:`k \in \{0, \dots, L-1\}` (the convention of
`kizuna.datasets`): a value outside :math:`[0, 1]` (or NaN) is a ``ValueError``, and so, while validation is
on (`kizuna.distributions.validation`), is a value off the grid (beyond float rounding of :math:`k/(L-1)`),
for which the bound below would not hold. The layer computes

.. math::
    v = \frac{k + u}{L},\quad u \sim \mathcal{U}[0, 1),\qquad
    p = \tfrac{\alpha}{2} + (1 - \alpha)\, v,\qquad z = \log\frac{p}{1-p},

    \log|\det J| = \sum_i \Big[\log\frac{L-1}{L} + \log(1-\alpha) - \log p_i - \log(1-p_i)\Big]

(the Jacobian with :math:`u` held fixed). The density a flow then puts on the dequantised
:math:`\tilde x = (k + u)/(L-1)` bounds the probability of the grey levels, since each level's bin
has volume :math:`(L-1)^{-D}` (Theis et al. 2016, arXiv:1511.01844; RealNVP, arXiv:1605.08803):

.. math:: \log P(k) \ \ge\ \mathbb{E}_u[\log p(\tilde x)] - D \log(L-1) \quad(\text{`bin_log_volume`}).

Bits per dimension are :math:`-\log_2 P(k) / D`. ``inverse`` maps back to the bin a value falls in,
so ``inverse(forward(x)) == x`` on the grid (in float64; in float32 a draw of :math:`u` within rounding of
0 or 1, about one pixel in :math:`10^5`, can come back one level off); its log-determinant is that of the
continuous inverse :math:`z \mapsto \tilde x` (before rounding), and it carries no gradient. With
:math:`\alpha = 0`, :math:`v` is kept inside :math:`(0, 1)` in the precision computed in (in float32,
:math:`255 + u` rounds to 256 for :math:`u` within :math:`8\cdot 10^{-6}` of 1, which made the logit infinite).

16-bit input (float16, bfloat16: a model moved to ``.half()``) is computed in float32 and the results are cast back
to the input's dtype: in 16-bit arithmetic the grid check let values half a level off pass and the dequantised
value lost its level. The grid tolerance is then the input's own rounding of :math:`k/(L-1)` (up to 0.06 of a
level in float16 at :math:`L = 256`; the tolerance is twice that), a value within it is dequantised from its level
:math:`k` itself (the rounding shifted the bin; the gradient in ``x`` is unchanged), and a dtype whose rounding
moves the levels by more than an eighth of a level cannot hold the grid: such input is a ``ValueError`` (bfloat16
for more than 65 levels, e.g. 8-bit images; float16 for more than 513). A 16-bit ``z`` keeps the level only to a
few hundredths of it, so with ``dequantize`` a round trip moves the pixels whose :math:`u` lies that close to a
bin edge one level (about 0.7 % of them in float16 at :math:`L = 256`); with ``dequantize=False`` it is exact.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from kizuna._data import check_int, computing_dtype, first_flagged, pop_pixyz_constant
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.flows.base import Flow, Tensor, row_sum


class Preprocess(Flow):
    """Dequantise and logit-transform grey levels (module docstring).

    Args:
        levels: :math:`L`, the number of grey levels (256 for 8-bit images, 17 for scikit-learn digits).
        alpha: :math:`\\alpha`, keeps the logit away from :math:`\\pm\\infty` (0.05 as in RealNVP and Pixyz).
        dequantize: add uniform noise :math:`u`; with ``False`` the bin centre :math:`u = 1/2` is used.

    A Pixyz checkpoint's ``data_constraint`` (Pixyz's :math:`\\alpha`) loads when it is this layer's ``alpha`` (see
    `_load_from_state_dict`).

    >>> import torch
    >>> f = Preprocess(levels=17).double()
    >>> x = torch.randint(0, 17, (2, 5)).double() / 16
    >>> torch.equal(f.inverse(f(x)), x)
    True
    """

    def __init__(self, levels: int = 256, alpha: float = 0.05, dequantize: bool = True) -> None:
        super().__init__(None)
        check_int("Preprocess: levels", levels, 2)  # (2.5 was taken as 2, None and "256" were raw errors)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"Preprocess: alpha must lie in [0, 1), got {alpha}")
        self.levels, self.alpha, self.dequantize = int(levels), float(alpha), dequantize

    @property
    def has_differentiable_inverse(self) -> bool:
        return False

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """Pixyz's checkpoints load too: Pixyz's ``Preprocess`` keeps :math:`\\alpha` as a buffer ``data_constraint``
        (``tensor([0.05])``), kizuna as the float ``alpha`` of the constructor (no state). Such an entry is read and
        dropped when it equals ``alpha`` (in the entry's precision, at most float32's: ``0.05`` saved in float32 and
        moved to float64 is still 0.05); any other value is an error, strict or not, naming both values: loading it
        would give another flow, so build ``Preprocess(alpha=value)`` for it."""
        pop_pixyz_constant(state_dict, prefix + "data_constraint", self.alpha, error_msgs,
                           "Pixyz Preprocess constraint (alpha)", "this layer's alpha",
                           "build Preprocess(alpha={}) to load it")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def bin_log_volume(self, n_features: int) -> float:
        """:math:`-D \\log(L-1)`: add it to a log-density of :math:`\\tilde x` to bound :math:`\\log P(k)`."""
        return -n_features * math.log(self.levels - 1)

    def _grid_tolerance(self, dtype: torch.dtype) -> float:
        """How far (in levels) ``x * (L - 1)`` of grid values given in ``dtype`` may lie from an integer: a few ulps of
        the arithmetic's precision (float32 for 16-bit input), at least twice the rounding of ``k / (L - 1)`` to the
        input's own dtype (``(L - 1) * eps / 4``, half an ulp below 1). A ValueError where that rounding exceeds
        an eighth of a level: the dtype cannot hold the grid (bfloat16 for 8-bit images)."""
        eps = torch.finfo(dtype).eps
        shift = (self.levels - 1) * eps / 4
        if shift > 0.125:
            raise ValueError(
                f"Preprocess: x is {dtype}, whose rounding of the grey levels k / {self.levels - 1} moves them by up "
                f"to {shift:.3g} of a level: it cannot hold levels={self.levels} on their grid; give x in float32 (or "
                f"float16 for at most 513 levels; a bfloat16 model can run in float32 under torch.autocast)")
        return (self.levels - 1) * max(8 * torch.finfo(computing_dtype(dtype)).eps, eps / 2)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if not x.is_floating_point():  # integer grey levels (0/1 for levels=2): the default float dtype
            x = x.to(torch.get_default_dtype())
        dtype = x.dtype  # (16-bit: computed in float32 from the levels, the results cast back; module docstring)
        tol = self._grid_tolerance(dtype)
        x = x.to(computing_dtype(dtype))
        inside = (x >= 0) & (x <= 1)  # written so that NaN is outside
        if not bool(inside.all()):
            hint = "; remove or impute it" if bool(x.isnan().any()) else ""
            raise ValueError(f"Preprocess: x must lie in [0, 1] (grey levels k / (levels - 1)), got "
                             f"{first_flagged(x, ~inside)}{hint}")
        k = x * (self.levels - 1)  # x = k / (L-1) rounded in x's precision: k within tol of an integer
        if validation_enabled():  # off the grid, the bound of bin_log_volume does not hold (one more check, one sync)
            off = (k - torch.round(k)).abs() > tol
            if bool(off.any()):
                raise ValueError(f"Preprocess: x must lie on the grid of levels={self.levels} grey levels "
                                 f"k / {self.levels - 1}, got {first_flagged(x, off)} (k = "
                                 f"{k[tuple(off.nonzero()[0])].item():.4g}); the dequantisation bound "
                                 "(bin_log_volume, bits/dim) needs them: set levels to the data's number of levels")
        if x.dtype != dtype:  # 16-bit: the level each value on the grid stands for (its rounding, up to 0.06 of a
            # level in float16, shifted the bin); the gradient in x is kept as it is (straight through)
            grid = torch.round(k)
            k = k + (torch.where((k - grid).abs() <= tol, grid, k) - k).detach()
        u = torch.rand_like(x) if self.dequantize else torch.full_like(x, 0.5)
        v = (k + u) / self.levels
        if self.alpha == 0.0:  # rounding can reach v = 1 (or 0): keep the logit finite
            tiny = torch.finfo(v.dtype).eps
            v = v.clamp(tiny, 1.0 - tiny)
        p = 0.5 * self.alpha + (1.0 - self.alpha) * v
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        z = log_p - log_1mp
        # dz/dp = 1/p + 1/(1 - p): the per-pixel log-Jacobian is -log p - log(1 - p), from the logs of the logit
        per_pixel = (math.log((self.levels - 1) / self.levels) + math.log(1.0 - self.alpha)) - (log_p + log_1mp)
        return z.to(dtype), row_sum(per_pixel).to(dtype)

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        dtype = z.dtype
        with torch.no_grad():
            z = z.to(computing_dtype(dtype))
            p = torch.sigmoid(z)
            v = (p - 0.5 * self.alpha) / (1.0 - self.alpha)
            k = torch.floor(v * self.levels).clamp(0, self.levels - 1)
            per_pixel = math.log((self.levels - 1) / self.levels) + math.log(1.0 - self.alpha) + F.softplus(-z) \
                + F.softplus(z)
        return (k / (self.levels - 1)).to(dtype), -row_sum(per_pixel).to(dtype)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, alpha={self.alpha}, dequantize={self.dequantize}"
