r"""Adversarial divergences: a discriminator (critic) estimates a divergence between ``p`` and ``q``.

With :math:`x_p \sim p`, :math:`x_q \sim q` and a discriminator :math:`d(x) \in (0, 1)` trained by
``d_loss()`` to tell them apart (:math:`d^* = \frac{p}{p+q}`, Goodfellow et al. 2014, arXiv:1406.2661):

* `AdversarialJensenShannon`:
  :math:`\mathbb{E}_p[\log d] + \mathbb{E}_q[\log(1-d)] = 2\,D_{JS}[p\|q] - \log 4` at :math:`d^*`;
* `AdversarialKullbackLeibler`: :math:`\mathbb{E}_p[\log\frac{d}{1-d}] = D_{KL}[p\|q]` at :math:`d^*`
  (the density-ratio trick, e.g. FactorVAE, Kim & Mnih 2018, arXiv:1802.05983);
* `AdversarialWassersteinDistance`: a critic :math:`f` gives
  :math:`\mathbb{E}_p[f] - \mathbb{E}_q[f] \le W_1[p, q]` for 1-Lipschitz :math:`f`, with equality
  at the best one; the critic is trained with the gradient penalty
  :math:`\lambda\,\mathbb{E}_{\hat x}[(\|\nabla f(\hat x)\|_2 - 1)^2]`,
  :math:`\hat x = \epsilon x_p + (1-\epsilon) x_q` (Gulrajani et al. 2017, arXiv:1704.00028).

Each loss evaluates to the **generator's** objective (a scalar: the expectations average the
batch of draws); ``.d_loss()`` is the discriminator's, a separate `Loss` to train the
discriminator's parameters with (see `kizuna.models.GAN`). A discriminator is a kizuna
`Bernoulli` :math:`d(t|x)` (its logits are used, numerically stable) or, as in Pixyz, a
`Deterministic` whose output is a probability (a real value for the Wasserstein critic).
Draws of ``q`` (or ``p``) without inputs take the batch size of the other's draws, or ``batch_n``.

Pixyz's discriminator-training API is kept: ``loss.loss_train(x_dict)`` takes one step of the
discriminator's optimiser (``loss.d_optimizer``, built on first use from the ``optimizer`` and
``optimizer_params`` keyword arguments, Adam by default) on ``d_loss()`` and returns that loss
before the step; ``loss.loss_test(x_dict)`` evaluates it without gradients; and
``loss.eval(x_dict, discriminator=True)`` evaluates it (as ``d_loss().eval(x_dict)``).

``loss.eval(x_dict, omit_term_of=p)`` (or ``q``) leaves that distribution's expectation out of the generator's value:
a term with no gradient for the generator (the data's, with the discriminator frozen) need not be computed in its
step. `kizuna.models.GAN` does this with ``data_term=False``, as a careful hand-written GAN does. The gradients are the
same; the discriminator's forward on the left-out side is not run, so a discriminator with batch normalisation in
training mode does not update its running statistics there (its evaluation-mode outputs then differ).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from kizuna._text import LATEX, format_name, symbol
from kizuna.distributions.base import Distribution, _with_values, batch_size_of, flat_rows
from kizuna.distributions.energy import autograd_values, input_leaf, outside_inference_mode
from kizuna.distributions.families import Bernoulli
from kizuna.distributions.special import Deterministic
from kizuna.distributions.torch_dist import validation, validation_enabled
from kizuna.formula import memo
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.memo import release_step, step_mark
from kizuna.losses.expectation import require_pathwise_draws

_LOG_MIN = -100.0  # log(0) is clamped here, as torch's binary cross-entropy does


def _interpolate(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """:math:`w\\,e + (1 - w)\\,s`, the gradient penalty's interpolates: one ``torch.lerp`` where the three share a
    floating dtype (four operators fewer than the formula as written; equal up to rounding), else the formula."""
    if start.dtype == end.dtype == weight.dtype and start.is_floating_point():
        return torch.lerp(start, end, weight)
    return weight * end + (1 - weight) * start


def _a_mismatch(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) reads as torch's dtype or device mismatch."""
    text = f"{err} {err.__cause__ or ''}"
    return any(word in text for word in ("dtype", "scalar type", "device", "type (torch."))


def _constants_unlike_parameters(dist: Distribution, err: BaseException, draw: Callable[[], Any]) -> str | None:
    """Why ``dist`` failed to draw with ``err``, where that was torch's dtype or device error (a "mat1 and mat2 must
    have the same dtype" in the generator's first layer, say) because a distribution inside it without parameters (a
    constant prior, ``Normal(loc=0.0, scale=1.0)``) holds its constants in another dtype or on another device than
    the parameters (networks converted by ``.double()`` or ``.to(device)``, the prior left as it was): the text names
    them and the ``.to()`` that converts each; else None. The prior is named only where it is the cause: ``draw()``
    (the failed draw, again) gets past the mismatch with the prior's constants converted (`_cured_by_converting`); a
    network that raised the error for another reason (a layer of its own left in another dtype) keeps its error.
    Run only after a draw failed: no cost per step."""
    if not _a_mismatch(err):
        return None
    param = next((t for t in dist.parameters() if t.is_floating_point()), None)
    if param is None:
        return None
    unlike, held_by = [], []
    for m in dist.modules():
        if not isinstance(m, Distribution) or next(m.parameters(), None) is not None:
            continue
        held = next((b for b in m.buffers(recurse=False) if b.is_floating_point()), None)
        if held is None or (held.dtype == param.dtype and held.device == param.device):
            continue
        to = ", ".join(([repr(str(param.device))] if held.device != param.device else [])
                       + ([str(param.dtype)] if held.dtype != param.dtype else []))
        unlike.append(f"the constants of {m.prob_text} are {held.dtype} on {held.device} (convert it too: "
                      f"its .to({to}))")
        held_by.append(m)
    if not unlike or not _cured_by_converting(held_by, param, draw):
        return None
    return (f"its parameters are {param.dtype} on {param.device}, but {'; '.join(unlike)}: a distribution without "
            "parameters is not converted by the networks' .double() / .to()")


def _cured_by_converting(modules: list[Distribution], like: Tensor, draw: Callable[[], Any]) -> bool:
    """Whether ``draw()`` gets past the dtype or device mismatch with the floating buffers of ``modules`` (constant
    priors) in ``like``'s dtype and on its device: it draws, or fails with an error that is no such mismatch (another
    problem, found once the prior is converted). The buffers are swapped for converted copies for the call and put
    back after it, whatever it does (the same tensors: nothing the user holds changes). The call draws without
    validation (whether the conversion cures the error is all it tells) and outside the evaluation's memo: the
    failed draw's parameters (the priors', in their own dtype) are not reused, and none of its are kept. (A network
    in training mode updates its batch-normalisation statistics once more.)"""
    saved = [(m, dict(m._buffers)) for m in modules]
    try:
        for m, buffers in saved:
            for key, buffer in buffers.items():
                if buffer is not None and buffer.is_floating_point():
                    m._buffers[key] = buffer.to(device=like.device, dtype=like.dtype)
        with validation(False), memo.outside_memo():
            draw()
    except Exception as again:  # noqa: BLE001 - any error of the user's network
        return not _a_mismatch(again)
    finally:
        for m, buffers in saved:
            for key, buffer in buffers.items():
                m._buffers[key] = buffer
    return True


def _clamped_log(p: Tensor, one_minus: bool) -> Tensor:
    """:math:`\\log p` (or :math:`\\log(1 - p)`) clamped at -100 as torch's binary cross-entropy, with a zero gradient,
    not NaN, where a saturated probability is exactly 0 (or 1)."""
    inside = p < 1 if one_minus else p > 0
    safe = torch.where(inside, p, torch.full_like(p, 0.5))
    value = torch.log1p(-safe) if one_minus else safe.log()
    return torch.where(inside, value, torch.full_like(value, _LOG_MIN)).clamp(min=_LOG_MIN)


class AdversarialLoss(Loss):
    """Base of the adversarial losses (see the module docstring).

    Args:
        p, q: distributions over the same variables (e.g. :math:`p_{data}(x)` and the generator).
        discriminator: :math:`d(t|x)` conditioned on those variables.
        batch_n: the batch size when neither ``p`` nor ``q`` takes inputs that fix it.
        optimizer, optimizer_params: the discriminator's optimiser for `loss_train` (keyword
            arguments, as Pixyz's): a ``torch.optim.Optimizer`` class and its keyword arguments. It
            is built over the discriminator's parameters on first use (``d_optimizer``), so a loss
            whose discriminator is trained elsewhere (`kizuna.models.GAN`'s ``d_model``) builds none.
    """

    symbol = ("D^Adv[{}||{}]", r"D^{{\mathrm{{Adv}}}}\left[{}\,\|\,{}\right]")  # (text, LaTeX) templates

    def __init__(self, p: Distribution, q: Distribution,
                 discriminator: Distribution, batch_n: int | None = None, *,
                 optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_params: Mapping[str, Any] | None = None) -> None:
        name = type(self).__name__
        if batch_n is not None and (isinstance(batch_n, bool) or not isinstance(batch_n, numbers.Integral)
                                    or batch_n < 1):
            raise TypeError(f"{name}: batch_n (the fourth argument) must be a positive int or None, got {batch_n!r}; "
                            "Pixyz's fourth argument (optimizer, or clip_value for AdversarialWassersteinDistance) "
                            "is a keyword argument here: pass optimizer=... or clip_value=... by keyword")
        if not callable(optimizer):
            raise TypeError(f"{name}: optimizer must be a torch.optim.Optimizer class, got {optimizer!r}")
        if optimizer_params is not None and not isinstance(optimizer_params, Mapping):
            raise TypeError(f"{name}: optimizer_params must be a dict of the optimizer's keyword arguments, "
                            f"got {type(optimizer_params).__name__}")
        if sorted(p.var) != sorted(q.var):
            raise ValueError(f"{type(self).__name__} needs p and q over the same variables: {p.var} vs {q.var}")
        require_pathwise_draws(name, p, q)  # the loss reaches a generator's parameters only through its draws
        if not set(p.var) & set(discriminator.cond_var):
            raise ValueError(
                f"{type(self).__name__}: the discriminator {discriminator.prob_text} must be conditioned on "
                f"{p.var}, the variables of {p.prob_text} and {q.prob_text}")
        super().__init__(p.input_var + q.input_var + [v for v in discriminator.cond_var if v not in p.var])
        self.p, self.q, self.d, self.batch_n = p, q, discriminator, batch_n
        self.loss_optimizer, self.loss_optimizer_params = optimizer, dict(optimizer_params or {})  # Pixyz's names
        self._d_optimizer: torch.optim.Optimizer | None = None

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q, self.d]

    def _render(self, fmt: dict[str, str]) -> str:
        return self.symbol[fmt is LATEX].format(symbol(self.p, fmt), symbol(self.q, fmt))

    # ------------------------------------------------------------------ draws
    def _batch_n(self, ctx: EvalContext) -> int | None:
        """Rows to draw: the loss's ``batch_n``, else the evaluation's (``eval(..., batch_n=)``), else the values'."""
        return self.batch_n or ctx.options.get("batch_n") or batch_size_of(ctx.values)

    def _draw(self, dist: Distribution, ctx: EvalContext, batch_n: int | None) -> dict[str, Tensor]:
        needed, own = dist.input_var, dist._var  # (read once: a product's input_var is computed on every read)
        inputs = {k: v for k, v in ctx.values.items() if k in needed or k not in own}
        dist._require(inputs, needed)
        try:
            out = dist._sample(inputs, batch_n, dist.has_reparam)
        except (RuntimeError, ValueError) as err:  # (checked only when a draw fails: no cost per step)
            unlike = _constants_unlike_parameters(dist, err, lambda: dist._sample(inputs, batch_n, dist.has_reparam))
            if unlike is None:
                raise  # (torch's own error, as it was)
            raise ValueError(f"{self}: {dist.prob_text} cannot draw: {unlike}") from err
        if batch_size_of(out, own) == 0:  # (the means over no rows were NaN, silently)
            raise ValueError(f"{self}: {dist.prob_text} gave no rows ({', '.join(own)} of shape "
                             f"{tuple(out[own[0]].shape)}): nothing to compare")
        return out

    def _draws(self, ctx: EvalContext) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One batch of draws from ``p`` and from ``q`` (the one with inputs first, to fix the size)."""
        first, second = (self.p, self.q) if self.p.input_var or not self.q.input_var else (self.q, self.p)
        n = self._batch_n(ctx)
        a = self._draw(first, ctx, n)
        b = self._draw(second, ctx, batch_size_of(a) or n)
        return (a, b) if first is self.p else (b, a)

    def _detached_draws(self, ctx: EvalContext) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        mark = step_mark()
        with torch.no_grad():
            xp, xq = self._draws(ctx)
        release_step(mark)  # parameters computed without a graph are not left for a generator term to reuse
        # (drawn without a graph: only a value given with one, e.g. data that requires grad, is cut from it)
        return ({k: v.detach() if isinstance(v, Tensor) and v.requires_grad else v for k, v in xp.items()},
                {k: v.detach() if isinstance(v, Tensor) and v.requires_grad else v for k, v in xq.items()})

    # ---------------------------------------------------------- discriminator
    def _omitted(self, ctx: EvalContext) -> Distribution | None:
        """The side whose term the generator's value leaves out: the evaluation option ``omit_term_of`` (``p`` or
        ``q``; `kizuna.models.GAN` with ``data_term=False`` passes the data's distribution), else None."""
        omit = ctx.options.get("omit_term_of")
        if omit is not None and omit is not self.p and omit is not self.q:
            raise ValueError(f"{self}: omit_term_of must be one of its two distributions, {self.p.prob_text} or "
                             f"{self.q.prob_text}, got {getattr(omit, 'prob_text', repr(omit))}")
        return omit

    def _d_input(self, ctx: EvalContext, x: dict[str, Tensor]) -> dict[str, Any]:
        return {**ctx.values, **x}

    def _d_output(self, values: dict[str, Any]) -> Tensor:
        """The discriminator's output (a logit for a Bernoulli), one value per row, in the shape the network gave it
        (``(B,)`` or ``(B, 1)``, say: every caller averages it or differentiates its sum, and a reshape would be one
        more node, in the gradient penalty's double backward too)."""
        d = self.d
        if isinstance(d, Bernoulli):
            out = None
            if not validation_enabled():  # the logits as the network gave them, without a torch object
                d._require(values, d._cond_var)
                out = d._params(values).get("logits")
            if out is None:  # validated (the first step), or given probabilities: torch's Bernoulli
                out = d.get_dist(values, independent=False).logits
        elif isinstance(d, Deterministic) and not validation_enabled():
            # a critic's forward, without `sample`'s argument checks (done at the validated first step); its own
            # variable is not read from the data here (`sample` kept a data value of that name as a fixed draw)
            d._require(values, d._cond_var)
            out = d._sample(_with_values(values, d), None, True)[d._var[0]]  # (a number given as a condition: a row)
        else:
            out = d.sample({k: v for k, v in values.items() if k not in d.var}, return_all=False)[d.var[0]]
        if out.dim() > 1 and out.shape[1:].numel() != 1:  # (not out[0]: an empty batch has no row 0)
            raise ValueError(f"{d.prob_text} must output one value per row, got shape {tuple(out.shape)}")
        return out

    def _log_d(self, values: dict[str, Any], d: bool = True, one_minus_d: bool = True
               ) -> tuple[Tensor | None, Tensor | None]:
        """:math:`\\log d(x)` and :math:`\\log(1 - d(x))`, one per row in the shape the discriminator gave (``(B, 1)``,
        say: every caller averages them, and a reshape would be one more node); only those asked for are computed
        (None for the other)."""
        out = self._d_output(values)
        if isinstance(self.d, Bernoulli):
            return F.logsigmoid(out) if d else None, F.logsigmoid(-out) if one_minus_d else None
        if not bool(((out >= 0) & (out <= 1)).all()):
            raise ValueError(f"{self.d.prob_text} must output probabilities in [0, 1] (use a sigmoid, or a Bernoulli)")
        return (_clamped_log(out, False) if d else None, _clamped_log(out, True) if one_minus_d else None)

    # ------------------------------------------------------------------ API
    def d_loss(self) -> Loss:
        """The discriminator's loss (to minimise over its parameters), see the module docstring."""
        return DiscriminatorLoss(self)

    def _value(self, ctx: EvalContext) -> Tensor:
        if ctx.options.get("discriminator"):  # Pixyz: eval(x_dict, discriminator=True) is the discriminator's loss
            return self._discriminator_value(ctx)
        return self._generator_value(ctx)

    def _generator_value(self, ctx: EvalContext) -> Tensor:
        raise NotImplementedError

    @property
    def d_optimizer(self) -> torch.optim.Optimizer:
        """The discriminator's optimiser for `loss_train` (Pixyz's ``d_optimizer``), built on first use."""
        if self._d_optimizer is None:
            params = [t for t in self.d.parameters() if t.requires_grad]
            if not params:
                raise ValueError(f"{type(self).__name__}: the discriminator {self.d.prob_text} has no trainable "
                                 "parameters to optimise")
            self._d_optimizer = self.loss_optimizer(params, **self.loss_optimizer_params)
        return self._d_optimizer

    def loss_train(self, train_x_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> Tensor:
        """One step of ``d_optimizer`` on the discriminator's loss (Pixyz's ``loss_train``): the discriminator in
        training mode, its gradients zeroed, ``d_loss()`` evaluated on ``train_x_dict`` (``kwargs`` are evaluation
        options, e.g. ``batch_n``), backpropagated and stepped; returns that loss (before the step, with its
        graph, as Pixyz). Only the discriminator's parameters change."""
        optimizer = self.d_optimizer
        self.d.train()
        optimizer.zero_grad()
        loss = self.d_loss().eval(train_x_dict, **kwargs)
        loss.backward()
        optimizer.step()
        self.discriminator_stepped()
        return loss

    def loss_test(self, test_x_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> Tensor:
        """The discriminator's loss on ``test_x_dict`` with the discriminator in evaluation mode and without
        gradients (Pixyz's ``loss_test``)."""
        self.d.eval()
        with torch.no_grad():
            return self.d_loss().eval(test_x_dict, **kwargs)

    def discriminator_stepped(self) -> None:
        """Called after every optimiser step of the discriminator (by `loss_train` and by `kizuna.models.GAN`):
        nothing here; `AdversarialWassersteinDistance` clips the critic's weights."""

    def _discriminator_value(self, ctx: EvalContext) -> Tensor:
        """Default (JS, KL): the binary cross-entropy :math:`-\\mathbb{E}_p[\\log d] - \\mathbb{E}_q[\\log(1-d)]`."""
        xp, xq = self._detached_draws(ctx)
        log_dp, _ = self._log_d(self._d_input(ctx, xp), one_minus_d=False)
        _, log_1m_dq = self._log_d(self._d_input(ctx, xq), d=False)
        return -(log_dp.mean() + log_1m_dq.mean())

    def _d_call(self) -> str:
        """``d(x)``: the discriminator as a function of its conditioning variables."""
        return f"{format_name(self.d.name)}({','.join(self.d.cond_var)})"

    def _d_text(self, fmt: dict[str, str]) -> str:
        d = self._d_call()
        left = fmt["expect"].format(symbol(self.p, fmt), fmt["log"].format(d))
        right = fmt["expect"].format(symbol(self.q, fmt), fmt["log"].format(f"(1 - {d})"))
        return f"-{left} - {right}"


class DiscriminatorLoss(Loss):
    """The loss that trains the discriminator of an `AdversarialLoss` (its ``d_loss()``)."""

    precedence = 10  # its formula is a difference

    def __init__(self, adversarial: AdversarialLoss) -> None:
        super().__init__(adversarial.input_var)
        self.adversarial = adversarial

    def _own_distributions(self) -> list[Distribution]:
        return [self.adversarial.d]

    def _value(self, ctx: EvalContext) -> Tensor:
        return self.adversarial._discriminator_value(ctx)

    def _render(self, fmt: dict[str, str]) -> str:
        return self.adversarial._d_text(fmt)


class AdversarialJensenShannon(AdversarialLoss):
    """:math:`2\\,D_{JS}[p\\|q] - \\log 4` through a discriminator (module docstring).

    Args:
        inverse_g_loss: as in Pixyz, evaluate the non-saturating generator loss
            :math:`-\\mathbb{E}_p[\\log(1-d)] - \\mathbb{E}_q[\\log d]` (same fixed point, stronger
            gradients early on); ``False`` gives the minimax value
            :math:`\\mathbb{E}_p[\\log d] + \\mathbb{E}_q[\\log(1-d)]`.
    """

    symbol = ("D_JS^Adv[{}||{}]", r"D_{{\mathrm{{JS}}}}^{{\mathrm{{Adv}}}}\left[{}\,\|\,{}\right]")

    def __init__(self, p: Distribution, q: Distribution,
                 discriminator: Distribution, batch_n: int | None = None,
                 inverse_g_loss: bool = True, **kwargs: Any) -> None:
        super().__init__(p, q, discriminator, batch_n, **kwargs)
        self.inverse_g_loss = inverse_g_loss

    def _generator_value(self, ctx: EvalContext) -> Tensor:
        xp, xq = self._draws(ctx)
        omit = self._omitted(ctx)
        inverse = self.inverse_g_loss  # -E_p[log(1-d)] - E_q[log d], else E_p[log d] + E_q[log(1-d)]
        total = None
        if omit is not self.p:
            log_dp, log_1m_dp = self._log_d(self._d_input(ctx, xp), d=not inverse, one_minus_d=inverse)
            total = (log_1m_dp if inverse else log_dp).mean()
        if omit is not self.q:
            log_dq, log_1m_dq = self._log_d(self._d_input(ctx, xq), d=inverse, one_minus_d=not inverse)
            term = (log_dq if inverse else log_1m_dq).mean()
            total = term if total is None else total + term
        return -total if inverse else total



class AdversarialKullbackLeibler(AdversarialLoss):
    """:math:`D_{KL}[p\\|q] \\approx \\mathbb{E}_p[\\log\\frac{d(x)}{1-d(x)}]` (module docstring)."""

    symbol = ("D_KL^Adv[{}||{}]", r"D_{{\mathrm{{KL}}}}^{{\mathrm{{Adv}}}}\left[{}\,\|\,{}\right]")

    def _generator_value(self, ctx: EvalContext) -> Tensor:
        if self._omitted(ctx) is self.p:  # (its estimate has no term of q to leave out)
            raise ValueError(f"{self}: its estimate is one expectation, over {self.p.prob_text}: omit_term_of cannot "
                             "leave it out")
        xp = self._draw(self.p, ctx, self._batch_n(ctx))
        log_d, log_1m_d = self._log_d(self._d_input(ctx, xp))
        return (log_d - log_1m_d).mean()



class AdversarialWassersteinDistance(AdversarialLoss):
    """:math:`\\mathbb{E}_p[f] - \\mathbb{E}_q[f]`, the critic trained with a gradient penalty (module docstring).

    Args:
        gradient_penalty: :math:`\\lambda` (10 in Gulrajani et al.; 0 turns the penalty off). By default 10,
            or 0 when ``clip_value`` is given (weight clipping replaces the penalty, as in Pixyz).
        clip_value: Pixyz's weight clipping (WGAN, Arjovsky et al. 2017, arXiv:1701.07875): after every
            discriminator step (`loss_train`, and `kizuna.models.GAN`'s) each of the critic's parameters is
            clamped to ``[-clip_value, clip_value]``. ``None`` (the default; Pixyz's is 0.01) clips nothing.
        optimizer, optimizer_params: as `AdversarialLoss`.
    """

    symbol = ("W^Adv[{}, {}]", r"W^{{\mathrm{{Adv}}}}\left[{}, {}\right]")

    def __init__(self, p: Distribution, q: Distribution,
                 discriminator: Distribution, batch_n: int | None = None,
                 gradient_penalty: float | None = None, clip_value: float | None = None, **kwargs: Any) -> None:
        super().__init__(p, q, discriminator, batch_n, **kwargs)
        if clip_value is not None and not (isinstance(clip_value, (int, float)) and clip_value > 0):
            raise ValueError(f"clip_value must be a positive number or None, got {clip_value!r}")
        if gradient_penalty is None:
            gradient_penalty = 10.0 if clip_value is None else 0.0
        if not gradient_penalty >= 0:
            raise ValueError(f"gradient_penalty must be >= 0, got {gradient_penalty}")
        self.gradient_penalty = float(gradient_penalty)
        self.clip_value = None if clip_value is None else float(clip_value)

    def discriminator_stepped(self) -> None:
        """With ``clip_value``: clamp every parameter of the critic to ``[-clip_value, clip_value]`` (Pixyz)."""
        if self.clip_value is None:
            return
        with torch.no_grad():
            for t in self.d.parameters():
                t.clamp_(-self.clip_value, self.clip_value)

    def _generator_value(self, ctx: EvalContext) -> Tensor:
        xp, xq = self._draws(ctx)
        omit = self._omitted(ctx)
        f = self._d_output
        if omit is self.p:
            return -f(self._d_input(ctx, xq)).mean()
        if omit is self.q:
            return f(self._d_input(ctx, xp)).mean()
        return f(self._d_input(ctx, xp)).mean() - f(self._d_input(ctx, xq)).mean()

    def penalty(self, ctx: EvalContext, xp: dict[str, Tensor], xq: dict[str, Tensor]) -> Tensor:
        """:math:`\\mathbb{E}_{\\hat x}[(\\|\\nabla_{\\hat x} f(\\hat x)\\|_2 - 1)^2]` over one batch of pairs.

        The draws are taken as values (the interpolates are new leaves, `input_leaf`). Differentiable in the critic's
        parameters when gradients are enabled; under ``torch.no_grad()`` and inside ``torch.inference_mode()`` (an
        evaluation: ``GAN.test``, ``loss_test``) the same value without a graph."""
        names = self.p._var
        ref = xp[names[0]]
        rows = ref.shape[0]
        if any(xp[v].shape[0] != rows or xq[v].shape[0] != rows for v in names):
            sizes = {xp[v].shape[0] for v in names} | {xq[v].shape[0] for v in names}
            raise ValueError(f"the gradient penalty pairs draws of {self.p.prob_text} and {self.q.prob_text}; "
                             f"their batch sizes differ: {sorted(sizes)}")
        # one weight per row, drawn in the shape that broadcasts over the first variable's row (the same numbers as
        # a draw of shape (B,)); no operator is spent on shapes where there is one variable of rows of features
        eps = torch.rand(rows, *([1] * (ref.dim() - 1)), dtype=ref.dtype, device=ref.device)
        create = torch.is_grad_enabled()  # a graph of the gradient only to train with (an evaluation takes none)
        mixed = {}
        # also inside torch.inference_mode() (`input_leaf`; it raised torch's "element 0 of tensors does not require
        # grad"), with the values taken under torch.no_grad()
        with outside_inference_mode(), torch.enable_grad():
            for v in names:
                e = eps if xp[v].dim() == ref.dim() else eps.reshape(-1, *([1] * (xp[v].dim() - 1)))
                mixed[v] = input_leaf(_interpolate(xq[v], xp[v], e))
            f = self._d_output({**autograd_values(ctx.values), **mixed})
            # the gradient of f's sum, with ones for f's gradient: no sum node to differentiate twice
            grads = torch.autograd.grad(f, [mixed[v] for v in names], torch.ones_like(f), create_graph=create)
        if len(grads) == 1 and grads[0].dim() == 2:
            norm = grads[0].norm(dim=1)
        else:
            norm = torch.cat([flat_rows(g) for g in grads], 1).norm(dim=1)
        return (norm - 1).pow(2).mean()

    def _discriminator_value(self, ctx: EvalContext) -> Tensor:
        xp, xq = self._detached_draws(ctx)
        f_p = self._d_output(self._d_input(ctx, xp)).mean()
        minus_gap = self._d_output(self._d_input(ctx, xq)).mean() - f_p  # -(E_p[f] - E_q[f])
        if self.gradient_penalty == 0:
            return minus_gap
        return torch.add(minus_gap, self.penalty(ctx, xp, xq), alpha=self.gradient_penalty)  # (one operator)

    def _d_text(self, fmt: dict[str, str]) -> str:
        f = self._d_call()
        gap = "{} - {}".format(fmt["expect"].format(symbol(self.q, fmt), f),
                               fmt["expect"].format(symbol(self.p, fmt), f))
        if self.gradient_penalty == 0:
            return gap
        name = format_name(self.d.name)
        norm = r"\left(\|\nabla {}(\hat x)\|_2 - 1\right)^2" if fmt is LATEX else "(||∇{}(x̂)||_2 - 1)^2"
        return "{} + {:g} * {}".format(gap, self.gradient_penalty, fmt["expect"].format("x̂", norm.format(name)))
