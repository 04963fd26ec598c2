r"""Hierarchical Pitman-Yor language models (Teh 2006) with explicit table sizes, the layer under NPYLM.

A context :math:`h = (v_1, \dots, v_m)` (oldest first) has a restaurant whose customers are the
words seen after it, seated at tables; its parent is :math:`h' = (v_2, \dots, v_m)`. With
:math:`c_{hw}` customers and :math:`t_{hw}` tables of word :math:`w`, :math:`c_h, t_h` their
totals and :math:`(d_m, \theta_m)` the discount and strength of depth :math:`m`,

.. math:: p(w\mid h) = \frac{c_{hw} - d_m t_{hw}}{\theta_m + c_h}
          + \frac{\theta_m + d_m t_h}{\theta_m + c_h}\, p(w\mid h'),

and below the empty context is the base distribution :math:`p_0(w)`. Adding a customer seats it
at table :math:`k` of :math:`w` with probability :math:`\propto c_{hwk} - d_m` or at a new table
:math:`\propto (\theta_m + d_m t_h)\, p(w\mid h')`, which sends a customer to the parent; removing
one picks a table :math:`\propto c_{hwk}` and, when the table empties, removes one from the parent.
A new (or emptied) table of the empty context calls ``on_base`` with ``+1`` (or ``-1``): NPYLM's
word model feeds its character model through it. ``sample_hyperparameters`` draws every
:math:`(d_m, \theta_m)` from its posterior with Teh's auxiliary variables (Teh 2006, NUS TRA2/06,
appendix C), priors :math:`d \sim \mathrm{Beta}(a, b)`, :math:`\theta \sim \mathrm{Gamma}(\alpha, \beta)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from kizuna._data import check_positive


def count_part(cw: Any, tw: Any, c: Any, d: float, theta: float) -> Any:
    """:math:`(c_{hw} - d\\,t_{hw}) / (\\theta + c_h)`: the part of :math:`p(w\\mid h)` from the counts
    (numbers or numpy arrays; 0 for an empty restaurant)."""
    return (cw - d * tw) / (theta + c)


def backoff(t: Any, c: Any, d: float, theta: float) -> Any:
    """:math:`(\\theta + d\\,t_h) / (\\theta + c_h)`: the weight of the parent's probability (1 when empty)."""
    return (theta + d * t) / (theta + c)


class Restaurant:
    """The customers of one context: ``tables[w]`` lists the sizes of ``w``'s tables."""

    __slots__ = ("c", "t", "cw", "tables")

    def __init__(self) -> None:
        self.c = 0
        self.t = 0
        self.cw: dict[Any, int] = {}
        self.tables: dict[Any, list[int]] = {}

    def count_part(self, w: Any, d: float, theta: float) -> float:
        """:math:`(c_{hw} - d\\,t_{hw}) / (\\theta + c_h)`, the part of :math:`p(w\\mid h)` from the counts."""
        cw = self.cw.get(w)
        return count_part(cw, len(self.tables[w]), self.c, d, theta) if cw else 0.0

    def backoff(self, d: float, theta: float) -> float:
        """:math:`(\\theta + d\\,t_h) / (\\theta + c_h)`, the weight of the parent's probability."""
        return backoff(self.t, self.c, d, theta)


def check_hyperparameters(where: str, discounts: Sequence[float], strengths: Sequence[float]) -> None:
    """Every depth's Pitman-Yor discount :math:`0 \\le d < 1` and strength :math:`\\theta > -d`, both finite (outside
    them the predictive probabilities leave [0, 1]: d = 0.5, theta = -0.7 gave p = 1.077 and -0.077); a ValueError
    naming ``where``, the depth and the values otherwise."""
    for m, (d, theta) in enumerate(zip(discounts, strengths, strict=True)):
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (d, theta))
        if not (ok and 0 <= d < 1 and theta > -d):
            raise ValueError(f"{where}: depth {m} has discount {d!r} and strength {theta!r}; a Pitman-Yor process "
                             "needs 0 <= discount < 1 and strength > -discount, both finite")


class HPYLM:
    """An n-gram hierarchical Pitman-Yor model over hashable symbols (see the module docstring).

    Args:
        order: :math:`n`; contexts have up to :math:`n - 1` symbols.
        base: :math:`p_0(w)`, a function of the word.
        on_base: called as ``on_base(w, +1 | -1, rng)`` when a table of the empty context opens or closes.
        observer: called as ``observer(context, w, customers, tables)`` with the changes (+1, -1 or 0)
            of every seating change (`kizuna.modules.npylm_chars` keeps its count tables with it: dense, or
            only the contexts in use for large alphabets).
        discount, strength: initial :math:`d_m, \\theta_m` of every depth.
    """

    def __init__(self, order: int, base: Callable[[Any], float],
                 on_base: Callable[[Any, int, np.random.Generator], None] | None = None, discount: float = 0.5,
                 strength: float = 1.0,
                 observer: Callable[[tuple, Any, int, int], None] | None = None) -> None:
        if order < 1:
            raise ValueError(f"HPYLM: order must be >= 1, got {order}")
        check_hyperparameters("HPYLM", [discount], [strength])
        self.order = order
        self.base = base
        self.on_base = on_base
        self.observer = observer
        self.d = [discount] * order
        self.theta = [strength] * order
        self.restaurants: dict[tuple, Restaurant] = {}

    def prob(self, w: Hashable, context: tuple = (), parent: float | None = None) -> float:
        """:math:`p(w \\mid h)` for the last ``order - 1`` symbols of ``context``; ``parent``: the already
        known :math:`p(w \\mid h')` (only the deepest level is then evaluated)."""
        h = self._context(context)
        if parent is None:
            return self._probs(w, h)[-1]
        r = self.restaurants.get(h)
        if r is None:
            return parent
        d, theta = self.d[len(h)], self.theta[len(h)]
        return r.count_part(w, d, theta) + r.backoff(d, theta) * parent

    def _context(self, context: tuple) -> tuple:
        return context[max(0, len(context) - self.order + 1):] if self.order > 1 else ()

    def _probs(self, w: Hashable, h: tuple) -> list[float]:
        """:math:`[p_0(w), p(w\\mid()), p(w\\mid h_{-1:}), \\dots, p(w\\mid h)]`."""
        out = [self.base(w)]
        p = out[0]
        for m in range(len(h) + 1):
            r = self.restaurants.get(h[len(h) - m:])
            if r is not None:
                p = r.count_part(w, self.d[m], self.theta[m]) + r.backoff(self.d[m], self.theta[m]) * p
            out.append(p)
        return out

    def add(self, w: Hashable, context: tuple, rng: np.random.Generator) -> None:
        """Seat one customer ``w`` in context ``context`` (and in its parents when it opens a table)."""
        h = self._context(context)
        probs = None  # p(w | h') of every depth, computed only when w already has a table to join
        for m in range(len(h), -1, -1):
            key = h[len(h) - m:]
            r = self.restaurants.get(key)
            if r is None:
                r = self.restaurants[key] = Restaurant()
            d, theta = self.d[m], self.theta[m]
            sizes = r.tables.get(w)
            r.c += 1
            if sizes is not None:
                if probs is None:
                    probs = self._probs(w, h)
                r.cw[w] += 1
                new = (theta + d * r.t) * probs[m]
                u = rng.random() * (r.cw[w] - 1 - d * len(sizes) + new)
                for k, size in enumerate(sizes):
                    u -= size - d
                    if u < 0:
                        sizes[k] += 1
                        self._observe(key, w, 1, 0)
                        return
                sizes.append(1)
            else:
                r.cw[w] = 1
                r.tables[w] = [1]
            r.t += 1
            self._observe(key, w, 1, 1)
        if self.on_base is not None:
            self.on_base(w, 1, rng)

    def remove(self, w: Hashable, context: tuple, rng: np.random.Generator) -> None:
        """Remove one customer ``w`` from context ``context`` (a table chosen by its size)."""
        h = self._context(context)
        for m in range(len(h), -1, -1):
            key = h[len(h) - m:]
            r = self.restaurants.get(key)
            sizes = None if r is None else r.tables.get(w)
            if sizes is None:
                raise KeyError(f"HPYLM.remove: no customer {w!r} in context {key!r}")
            u = rng.random() * r.cw[w]
            k = 0
            while u >= sizes[k] and k < len(sizes) - 1:
                u -= sizes[k]
                k += 1
            sizes[k] -= 1
            r.c -= 1
            r.cw[w] -= 1
            self._observe(key, w, -1, -(sizes[k] == 0))
            if sizes[k] > 0:
                return
            sizes.pop(k)
            r.t -= 1
            if not sizes:
                del r.tables[w], r.cw[w]
            if r.c == 0:
                del self.restaurants[key]
        if self.on_base is not None:
            self.on_base(w, -1, rng)

    def seating(self) -> list:
        """Every restaurant's seating as plain lists, ``[[context, [[w, table sizes], ...]], ...]`` in the model's
        own order (a saved NPYLM keeps it, `kizuna.modules.npylm.NPYLMState`)."""
        return [[list(key), [[w, list(sizes)] for w, sizes in r.tables.items()]] for key, r in self.restaurants.items()]

    def set_seating(self, seating: list) -> None:
        """Replace every restaurant by those of `seating`'s output (the same order, so later draws are the ones the
        saved model would make); the observer sees every word of the old seating leave and of the new one arrive,
        ``on_base`` is not called (the base model's seating is restored with it). Nothing changes when it raises."""
        restaurants: dict[tuple, Restaurant] = {}
        for key, words in seating:
            key = tuple(key)
            if len(key) >= self.order or key in restaurants:
                raise ValueError(f"HPYLM.set_seating: context {key!r} is repeated or deeper than order {self.order}")
            r = restaurants[key] = Restaurant()
            for w, sizes in words:
                sizes = [int(size) for size in sizes]
                if not sizes or min(sizes) < 1 or w in r.tables:
                    raise ValueError(f"HPYLM.set_seating: bad tables {sizes!r} of {w!r} in context {key!r}")
                r.tables[w], r.cw[w] = sizes, sum(sizes)
                r.c += r.cw[w]
                r.t += len(sizes)
        for key, r in self.restaurants.items():
            for w, sizes in r.tables.items():
                self._observe(key, w, -r.cw[w], -len(sizes))
        self.restaurants = restaurants
        for key, r in restaurants.items():
            for w, sizes in r.tables.items():
                self._observe(key, w, r.cw[w], len(sizes))

    def _observe(self, key: tuple, w: Hashable, customers: int, tables: int) -> None:
        if self.observer is not None:
            self.observer(key, w, customers, tables)

    def sample_hyperparameters(self, rng: np.random.Generator, a: float = 1.0, b: float = 1.0,
                               alpha: float = 1.0, beta: float = 1.0) -> None:
        """Draw every depth's :math:`(d_m, \\theta_m)` given the seating (auxiliary-variable Gibbs); the priors
        :math:`d \\sim \\mathrm{Beta}(a, b)`, :math:`\\theta \\sim \\mathrm{Gamma}(\\alpha, \\beta)` (shape, rate) need
        positive finite parameters, a ValueError naming the first other one (NaN drew NaN hyperparameters, a negative
        one failed in numpy)."""
        for name, value in (("a", a), ("b", b), ("alpha", alpha), ("beta", beta)):
            check_positive(f"HPYLM.sample_hyperparameters: the prior's {name}", value)
        stats = np.zeros((self.order, 4))  # sum y, sum (1 - y), sum log x, sum (1 - z)
        for key, r in self.restaurants.items():
            m, d, theta = len(key), self.d[len(key)], self.theta[len(key)]
            if r.t >= 2:
                i = np.arange(1, r.t)
                y = rng.random(r.t - 1) < theta / (theta + d * i)
                stats[m, 0] += y.sum()
                stats[m, 1] += (~y).sum()
            if r.c >= 2:  # Γ(θ+1)/Γ(θ+c) depends on θ whenever c >= 2, one table or more (Teh 2006, App. C)
                stats[m, 2] += np.log(max(rng.beta(theta + 1, r.c - 1), 1e-300))
            sizes = np.array([s for tables in r.tables.values() for s in tables if s >= 2])
            for s in sizes.tolist():
                j = np.arange(1, s)
                stats[m, 3] += (rng.random(s - 1) >= (j - 1) / (j - d)).sum()
        for m in range(self.order):
            self.d[m] = float(rng.beta(a + stats[m, 1], b + stats[m, 3]))
            self.theta[m] = float(rng.gamma(alpha + stats[m, 0], 1.0 / (beta - stats[m, 2])))
