"""`GAN`: the Pixyz preset for generative adversarial networks, with alternating updates.

.. math::
    \\min_p \\max_d\\ \\mathbb{E}_{p_{data}(x)}[\\log d(x)] + \\mathbb{E}_{p(x)}[\\log(1 - d(x))]

Each ``train`` call takes ``d_steps`` discriminator steps on ``loss.d_loss()`` (fresh generator
draws each time, no gradient into the generator), then one generator step on ``loss``
(Goodfellow et al. 2014, arXiv:1406.2661; with `AdversarialWassersteinDistance` and
``d_steps=5`` it is WGAN-GP, Gulrajani et al. 2017, arXiv:1704.00028).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from kizuna.distributions.base import Distribution
from kizuna.distributions.special import EmpiricalDistribution
from kizuna.losses.adversarial import AdversarialJensenShannon, AdversarialKullbackLeibler, AdversarialLoss
from kizuna.models import checkpoint as ckpt
from kizuna.models.model import Model, StepResult


class GAN(Model):
    """A generator :math:`p(x)` and a discriminator :math:`d(t|x)` trained in turns.

    Args:
        p: the generator, e.g. ``(G * prior).marginalize_var("z")``.
        discriminator: :math:`d(t|x)` (see `kizuna.losses.adversarial`).
        optimizer, optimizer_params: the generator's optimiser; ``d_optimizer``,
            ``d_optimizer_params`` the discriminator's (the positional order of Pixyz's ``GAN``).
        clip_grad_norm, clip_grad_value: gradient clipping for both.
        p_data: the data distribution (default ``EmpiricalDistribution(p.var)``).
        adversarial: the loss class, `AdversarialJensenShannon` by default (``D_JS[p_data || p]``);
            `AdversarialKullbackLeibler` is built as ``KL[p || p_data]``, the generator's KL to the data (its
            estimate draws from the first distribution only, so the other order would not train the generator).
        adversarial_params: its extra keyword arguments (e.g. ``{"gradient_penalty": 10.0}``, or
            ``{"clip_value": 0.01}`` for WGAN's weight clipping after every discriminator step).
        d_steps: discriminator steps per generator step.
        data_term: whether the generator's loss evaluates its term over the data (``-E_data[log(1 - d)]`` in the
            JS loss, ``E_data[f]`` in the Wasserstein one), as Pixyz's GAN does (the default). That term has no
            gradient for the generator (except in a layer shared by the two players, which both optimisers hold: the
            term's gradient reaches it through the discriminator, so there ``True`` trains it as Pixyz's GAN and
            ``False`` as the hand-written loop without the term), so ``False`` leaves it out (the loss's
            ``omit_term_of`` option), as a careful hand-written GAN does: one discriminator forward fewer per
            generator step, the same gradients and trained parameters of both players otherwise (bitwise where the
            discriminator draws no random numbers; with dropout the data term's forward drew masks, so the same in
            distribution), but the generator's reported
            loss (``train``, ``step``, ``test``, ``evaluate``, and `fit`'s columns) is then the generated batch's term
            only (``-E_p[log d]``, ``-E_p[f]``). Not the same: the discriminator's buffers. The data term's forward
            runs it in training mode, so a discriminator with batch normalisation updates its running statistics
            once more per generator step under ``True`` than under ``False``; its evaluation-mode outputs then
            differ, and with them the validation losses (``test``, ``evaluate``, `fit`'s ``valid`` columns, the
            generator's and ``d_loss``) and what reads them (early stopping, a ``ReduceLROnPlateau``, which then
            can change the parameters too). `AdversarialKullbackLeibler`'s estimate has no data term: the option
            changes nothing there.
        compile, validate: as `Model`'s, for both.

    A layer shared by the two players (a parameter in both optimisers) is trained by both steps: by the discriminator's
    with its gradient of the discriminator's loss, by the generator's with its gradient of the generator's loss
    (through both networks), as Pixyz's GAN and a hand-written loop with two optimisers do.

    The generator and the discriminator are two `Model`s (``self`` and ``self.d_model``); `save`
    writes both players' states into one checkpoint file, and `load` reads it (or an older pair of files, the
    discriminator's at ``path + ".discriminator"``). Neither takes a learning-rate scheduler here: set one on either
    afterwards (``model.d_model.scheduler = ReduceLROnPlateau(model.d_model.optimizer)``); `fit` steps each after
    every epoch, a ``ReduceLROnPlateau`` with its own player's loss (the discriminator's: the ``d_loss`` term,
    `submodel_terms`).

    >>> from torch import nn
    >>> from kizuna.distributions import Bernoulli, Deterministic, Normal
    >>> class G(Deterministic):
    ...     def __init__(self):
    ...         super().__init__(var=["x"], cond_var=["z"])
    ...         self.net = nn.Linear(2, 3)
    ...     def forward(self, z):
    ...         return {"x": self.net(z)}
    >>> class D(Bernoulli):
    ...     def __init__(self):
    ...         super().__init__(var=["t"], cond_var=["x"], name="d")
    ...         self.net = nn.Linear(3, 1)
    ...     def forward(self, x):
    ...         return {"logits": self.net(x)}
    >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    >>> model = GAN((G() * prior).marginalize_var("z"), D(), optimizer_params={"lr": 1e-3})
    >>> print(model.loss_cls)
    D_JS^Adv[p_{data}(x)||p(x)]
    >>> g_loss, d_loss = model.train({"x": torch.randn(8, 3)})  # d_steps discriminator steps, then the generator's
    >>> sorted(model.step({"x": torch.randn(8, 3)}).terms)
    ['D_JS^Adv[p_{data}(x)||p(x)]', 'd_loss']
    """

    def __init__(
        self,
        p: Distribution,
        discriminator: Distribution,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        d_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        d_optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        *,
        p_data: Distribution | None = None,
        adversarial: type[AdversarialLoss] = AdversarialJensenShannon,
        adversarial_params: Mapping[str, Any] | None = None,
        d_steps: int = 1,
        data_term: bool = True,
        compile: bool | Mapping[str, Any] = False,
        validate: bool | None = None,
    ) -> None:
        if isinstance(d_steps, bool) or not isinstance(d_steps, numbers.Integral) or d_steps < 1:
            raise ValueError(f"GAN: d_steps must be an int of at least 1, got {d_steps!r}")
        if not isinstance(data_term, bool):
            raise TypeError(f"GAN: data_term must be True or False, got {data_term!r}")
        p_data = p_data if p_data is not None else EmpiricalDistribution(p.var)
        if not (isinstance(adversarial, type) and issubclass(adversarial, AdversarialLoss)):
            raise TypeError(f"GAN: adversarial must be a kizuna adversarial loss class (AdversarialJensenShannon, "
                            f"AdversarialKullbackLeibler, AdversarialWassersteinDistance), got {adversarial!r}")
        # the KL's estimate E_p[log d / (1 - d)] draws from its first distribution only: the generator's KL to the
        # data, KL[p || p_data] (KL[p_data || p] passed no gradient to the generator: it never trained, silently)
        first, second = (p, p_data) if issubclass(adversarial, AdversarialKullbackLeibler) else (p_data, p)
        loss = adversarial(first, second, discriminator, **dict(adversarial_params or {}))
        super().__init__(loss, distributions=[p], optimizer=optimizer, optimizer_params=optimizer_params,
                         clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value, compile=compile,
                         validate=validate)
        self.p, self.discriminator, self.d_steps = p, discriminator, d_steps
        self.p_data, self.data_term = p_data, data_term
        self.d_model = Model(loss.d_loss(), distributions=[discriminator], optimizer=d_optimizer,
                             optimizer_params=d_optimizer_params, clip_grad_norm=clip_grad_norm,
                             clip_grad_value=clip_grad_value, compile=compile, validate=validate)

    extra_terms = ("d_loss",)

    def __str__(self) -> str:
        left_out = "" if self.data_term else f"\nThe generator's steps leave out the term over {self.p_data.prob_text}"
        return f"{super().__str__()}\nDiscriminator loss: {self.d_model.loss_cls}{left_out}"

    def _g_options(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The generator loss's evaluation options: with ``data_term=False`` the data's term is left out."""
        return options if self.data_term else {**options, "omit_term_of": self.p_data}

    def _d_train(self, x_dict: Mapping[str, Any] | None, options: Mapping[str, Any]) -> torch.Tensor:
        """One discriminator step, then the loss's hook (`AdversarialWassersteinDistance` clips the critic there)."""
        loss = self.d_model.train(x_dict, **options)
        self.loss_cls.discriminator_stepped()
        return loss

    def _d_step(self, batch: Mapping[str, Any], options: Mapping[str, Any]) -> float:
        loss = self.d_model.step(batch, **options).loss
        self.loss_cls.discriminator_stepped()
        return loss

    def train_discriminator(self, x_dict: Mapping[str, Any] | None = None, **options: Any) -> torch.Tensor:
        """``d_steps`` discriminator steps on ``x_dict``; returns their mean loss (a detached 0-d tensor)."""
        x_dict = self._values(x_dict, "train_discriminator")  # (named here, not as the discriminator's Model.train)
        self._set_mode(True)  # the generator draws the fake batch in training mode (an evaluation left it in eval)
        # the sum from the first loss on, not from 0 (``0 + loss`` is the loss), and no division by one: two tensor
        # operators fewer per call, the same mean
        total = self._d_train(x_dict, options)
        for _ in range(self.d_steps - 1):
            total = total + self._d_train(x_dict, options)
        return total if self.d_steps == 1 else total / self.d_steps

    def step(self, batch: Mapping[str, Any], **options: Any) -> StepResult:
        """`Model.step` after ``d_steps`` discriminator steps; their mean loss is reported as ``d_loss``."""
        batch = self._values(batch, "step")
        self._set_mode(True)  # as `train_discriminator`: validation left the generator in evaluation mode
        d_loss = sum(self._d_step(batch, options) for _ in range(self.d_steps)) / self.d_steps
        with self._discriminator_frozen():
            value, terms = super().step(batch, **self._g_options(options))
        return StepResult(value, {**terms, "d_loss": d_loss})

    @contextmanager
    def _discriminator_frozen(self) -> Iterator[None]:
        """The generator's step with the discriminator's own parameters not requiring gradients, as a careful
        hand-written GAN does: its step needs no gradient of them (the discriminator's own step starts from zero
        gradients), so autograd computes none, and the loss's term on the data, which has no generator gradient,
        builds no graph at all where the players share no layer (it was differentiated through the discriminator at
        every generator step; a shared layer's graph is built, the term's gradient reaching it). The
        generator's gradient is the same. A parameter the generator's optimiser trains too (a layer shared by the two
        players) is not frozen: the generator's step updates it with its whole gradient, through both players, as
        Pixyz's GAN and a hand-written loop do (frozen, it was trained by the discriminator alone, silently)."""
        # the parameters the discriminator's optimiser trains, read from its groups (walking its modules cost as much
        # as the twelve flag changes), less those in the generator's (read at each step: a group may be added)
        shared = {id(t) for group in self.optimizer.param_groups for t in group["params"]}
        params = [t for group in self.d_model.optimizer.param_groups for t in group["params"]
                  if t.requires_grad and id(t) not in shared]
        for t in params:
            t.requires_grad_(False)
        try:
            yield
        finally:
            for t in params:
                t.requires_grad_(True)

    def train(self, x_dict: Mapping[str, Any] | None = None, adversarial_loss: bool = True,  # type: ignore[override]
              **options: Any) -> Any:
        """``d_steps`` discriminator steps, then a generator step; returns ``(g_loss, d_loss)`` (Pixyz's GAN
        contract; `fit` uses `step`, whose result has the shape of every model's). With
        ``adversarial_loss=False`` only the generator steps and its loss is returned (as Pixyz)."""
        if "train_x_dict" in options:  # Pixyz's name of x_dict
            x_dict = self._pixyz_data(x_dict, options, "train")
        x_dict = self._values(x_dict, "train")
        if not adversarial_loss:
            with self._discriminator_frozen():
                return super().train(x_dict, **self._g_options(options))
        d_loss = self.train_discriminator(x_dict, **options)
        with self._discriminator_frozen():
            return super().train(x_dict, **self._g_options(options)), d_loss

    def test(self, x_dict: Mapping[str, Any] | None = None, adversarial_loss: bool = True,  # type: ignore[override]
             **options: Any) -> Any:
        """The generator's loss and, with ``adversarial_loss``, the discriminator's, without gradients (Pixyz)."""
        if "test_x_dict" in options:  # Pixyz's name of x_dict
            x_dict = self._pixyz_data(x_dict, options, "test")
        g_loss = super().test(x_dict, **self._g_options(options))
        return (g_loss, self.d_model.test(x_dict, **options)) if adversarial_loss else g_loss

    def evaluate(self, batch: Mapping[str, Any], **options: Any) -> StepResult:
        """`Model.evaluate` with the discriminator's test loss as ``d_loss``."""
        value, terms = super().evaluate(batch, **self._g_options(options))
        return StepResult(value, {**terms, "d_loss": self.d_model.evaluate(batch, **options).loss})

    def _assess(self, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """`Model._assess` with the discriminator in evaluation mode too: the generator's loss reads it (it was left
        in training mode by the last step, so validation ran its dropout and moved its batch-norm statistics)."""
        self.d_model._set_mode(False)
        return super()._assess(batch, options, terms)

    def submodels(self) -> list[Model]:
        """The discriminator's model (trained by `step` too)."""
        return [self.d_model]

    def submodel_terms(self) -> list[str]:
        """The discriminator's own loss is the term ``"d_loss"``: `fit` steps a ``ReduceLROnPlateau`` set on
        ``d_model.scheduler`` with its epoch mean (the generator's loss, which tends to rise as the discriminator
        improves, cut its learning rate while its own loss fell)."""
        return ["d_loss"]

    def state_dict(self) -> dict[str, Any]:
        """`Model.state_dict` of the generator with the discriminator's inside (``"discriminator"``): `save` writes
        both players in one file, so that a kill between two writes cannot leave a checkpoint of one player's
        epoch k + 1 beside the other's epoch k (which loaded without a word, and the resumed run differed)."""
        return {**super().state_dict(), "discriminator": self.d_model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Both players from `state_dict`, or neither: a discriminator that does not fit leaves the generator as it
        was."""
        if "discriminator" not in state:
            raise ValueError(f"{source} holds no discriminator: not a GAN checkpoint")
        kept = copy.deepcopy(super().state_dict())  # (state_dict holds the live tensors)
        # and the flags a load sets: put back as they were (a failed load left the generator "resumed", so that the
        # next fit call continued an earlier call's early stopping instead of starting its own)
        flags = (self._resumed, set(self._validated), self._training)
        super().load_state_dict(state, source)
        try:
            self.d_model.load_state_dict(state["discriminator"], f"{source} (discriminator)")
        except BaseException:
            super().load_state_dict(kept, source)
            self._resumed, self._validated, self._training = flags
            raise

    def load(self, path: str | PathLike[str]) -> None:
        """Restore a checkpoint written by `save` (both players in one file); one written before they shared a file
        (the discriminator's at ``path + ".discriminator"``) is read too."""
        state = ckpt.load(path)
        if "discriminator" not in state and Path(f"{path}.discriminator").is_file():
            state = {**state, "discriminator": ckpt.load(f"{path}.discriminator")}
        self.load_state_dict(state, source=str(path))
