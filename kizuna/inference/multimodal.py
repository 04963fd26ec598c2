r"""Uses of a multimodal VAE: the shared latent from any subset of modalities, cross generation, coherence.

A multimodal VAE has one latent :math:`z` shared by modalities :math:`x_1..x_M`,
:math:`p(x_1..x_M, z) = p(z)\prod_m p(x_m|z)`, and encoders for subsets of the modalities:

* separate networks per subset, e.g. JMVAE's :math:`q(z|x,y)`, :math:`q(z|x)`, :math:`q(z|y)`
  (Suzuki et al. 2016, arXiv:1611.01891);
* one product of experts (MVAE, Wu & Goodman 2018, arXiv:1802.05335) or mixture of experts
  (MMVAE, Shi et al. 2019, arXiv:1911.03393) whose absent experts are left out, so one
  distribution serves every subset (`ProductOfNormal`, `MixtureOfNormal`).

`infer_latent` picks the encoder for the modalities present in ``x_dict`` (missing-modality
inference); `cross_generate` decodes another modality from the latent of the others (the target's
own values, if given, are left out),

.. math:: \hat x_t = \mathbb E_{p(x_t|z)}[x_t], \qquad z = \mathbb E_{q(z|x_S)}[z],

(or draws both); `coherence` is the accuracy of a classifier on generated samples, judged
against the labels of the rows they were generated from (Shi et al. 2019, section 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kizuna.distributions.base import Distribution
from kizuna.distributions.moe import MixtureOfNormal
from kizuna.distributions.poe import ProductOfNormal
from kizuna.distributions.replace import ReplaceVarDistribution
from kizuna.formula.expr import values_dict
from kizuna.inference._checks import as_tensors, batch_rows, on_models, own_draws, require

Tensor = torch.Tensor
Encoders = Distribution | Sequence[Distribution]


def _as_list(encoders: Encoders) -> list[Distribution]:
    found = [encoders] if isinstance(encoders, Distribution) else list(encoders)
    if not found or not all(isinstance(e, Distribution) for e in found):
        raise TypeError("the encoders must be a kizuna Distribution or a non-empty list of them")
    latents = {tuple(sorted(e.var)) for e in found}
    if len(latents) > 1:
        raise ValueError(f"the encoders infer different variables: {' vs '.join(e.prob_text for e in found)}")
    return found


def modalities(encoders: Encoders) -> list[str]:
    """Every variable some encoder conditions on, in order of first appearance."""
    return list(dict.fromkeys(c for e in _as_list(encoders) for c in e.cond_var))


def select_encoder(encoders: Encoders, given: Iterable[str]) -> Distribution:
    """The encoder for exactly the modalities ``given``.

    An encoder whose ``cond_var`` equals ``given`` comes first; otherwise one whose inputs are
    optional (a product or mixture of experts) and cover ``given``, where every modality given feeds
    an expert whose inputs are all given (an expert q(z|x,y) given x alone is left out, and x would
    be ignored). Anything else is an error listing what the encoders take.

    >>> from kizuna.distributions import Normal, ProductOfNormal
    >>> qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    >>> select_encoder([qx, qy], ["y"]).prob_text
    'q(z|y)'
    >>> select_encoder(ProductOfNormal([qx, qy], name="q"), ["x", "y"]).prob_text
    'q(z|x,y)'
    """
    found, given = _as_list(encoders), set(given)
    for e in found:
        if set(e.cond_var) == given:
            return e
    unusable = []  # why an encoder of optional inputs covering ``given`` cannot use it
    for e in found:
        if not e.input_var and given <= set(e.cond_var) and given:
            reason = _unused_by_experts(e, given)
            if reason is None:
                return e
            unusable.append(reason)
    latent = ", ".join(found[0].var)
    advice = (f"{'; '.join(unusable)}: give its other inputs too, or add an encoder or expert for this subset"
              if unusable else
              "add one for this subset, or use a ProductOfNormal / MixtureOfNormal of experts, which takes any subset")
    raise ValueError(
        f"no encoder infers {latent} from exactly {', '.join(sorted(given)) or 'nothing'}; the encoders are "
        f"{', '.join(e.prob_text for e in found)} ({advice})"
    )


def _expert_inputs(encoder: Distribution) -> list[list[str]] | None:
    """The inputs of each expert of a `ProductOfNormal` / `MixtureOfNormal` (renamed or not), in ``encoder``'s names;
    None for any other encoder."""
    renames = []
    base = encoder
    while isinstance(base, ReplaceVarDistribution):
        renames.append(base._rename)
        base = base.p
    if not isinstance(base, (ProductOfNormal, MixtureOfNormal)):
        return None
    inputs = []
    for expert in base.p:
        names = list(expert.cond_var)
        for rename in reversed(renames):  # the innermost renaming first
            names = [rename.get(n, n) for n in names]
        inputs.append(names)
    return inputs


def _unused_by_experts(encoder: Distribution, given: set[str]) -> str | None:
    """None where each modality of ``given`` feeds an expert of ``encoder`` whose inputs are all given (an expert
    lacking an input is left out); otherwise why not. An expert q(z|x,y) given x alone was skipped and x ignored
    without a word (with no other expert present, the prior came back, one row for N)."""
    experts = _expert_inputs(encoder)
    if experts is None:
        return None
    runs = [set(inputs) for inputs in experts if set(inputs) <= given]
    unused = [m for m in sorted(given) if not any(m in inputs for inputs in runs)]
    if not unused:
        return None

    def missing(m: str) -> str:  # the inputs each expert over m lacks
        return " or ".join(", ".join(n for n in inputs if n not in given) for inputs in experts if m in inputs)

    return f"no expert of {encoder.prob_text} can use {'; '.join(f'{m} without {missing(m)}' for m in unused)}"


def _given(encoders: Encoders, x_dict: Mapping[str, Any], who: str) -> tuple[Distribution, dict[str, Tensor]]:
    names = modalities(encoders)
    x_dict = values_dict(x_dict, who, names=names)  # (a bare tensor was torch's error in ``m in x_dict``)
    present = [m for m in names if m in x_dict]
    if not present:
        raise ValueError(f"{who} needs at least one of the modalities {', '.join(names)}; "
                         f"given {', '.join(sorted(x_dict)) or 'nothing'}")
    x_dict = as_tensors(x_dict, present)  # (numpy arrays and lists were refused: "x must be a torch.Tensor")
    batch_rows(x_dict, present, who)
    encoder = select_encoder(encoders, present)
    return encoder, on_models({m: x_dict[m] for m in present}, encoder)  # (float64 data failed in a float32 network)


def infer_latent(encoders: Encoders, x_dict: Mapping[str, Any], sample: bool = False) -> dict[str, Tensor]:
    r"""The shared latent inferred from the modalities present in ``x_dict``, without gradients.

    The encoder runs in eval mode (dropout off, batch norm on its running statistics, which stay unchanged; each
    module is returned to its own mode afterwards); floating data is converted to the floating dtype of the encoder's
    factors that read it (each by its network's first parameter, docs/uses.md; experts without parameters by their
    buffers: float64 experts get float64 data beside a product's own float32 :math:`\mathcal N(0, I)` buffers) and
    moved to its device, as `kizuna.inference.anomaly_score` does (tensors, numpy arrays and lists of numbers).

    Args:
        encoders: one encoder for every subset it serves (see `select_encoder`).
        x_dict: values of some of the modalities (tensors, numpy arrays or lists of numbers; other keys are
            ignored), same number of rows.
        sample: draw :math:`z \sim q(z|x_S)` instead of returning its mean.

    Returns:
        ``{latent name: (N, *features)}``.

    >>> from kizuna.distributions import Normal, ProductOfNormal
    >>> qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    >>> q = ProductOfNormal([qx, qy], name="q")
    >>> infer_latent(q, {"x": torch.full((1, 2), 3.0)})["z"]  # x alone: N(0,1) N(3,1) -> mean 1.5
    tensor([[1.5000, 1.5000]])
    """
    return _latent(encoders, x_dict, sample, "infer_latent")


def _latent(encoders: Encoders, x_dict: Mapping[str, Any], sample: bool, who: str) -> dict[str, Tensor]:
    """`infer_latent` for the helper ``who`` its errors name (`cross_generate`'s were named infer_latent)."""
    encoder, given = _given(encoders, x_dict, who)
    from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

    with torch.no_grad(), evaluating(encoder):
        if sample:
            return own_draws(encoder, given)
        if len(encoder.var) != 1:
            raise ValueError(f"{who}: {encoder.prob_text} draws several variables; use sample=True")
        return {encoder.var[0]: encoder.sample_mean(given)}


def cross_generate(encoders: Encoders, decoder: Distribution, x_dict: Mapping[str, Any],
                   sample: bool = False) -> Tensor:
    r"""Generate ``decoder``'s modality from the other modalities present in ``x_dict``, without gradients.

    The networks run in eval mode and the data is converted as in `infer_latent`.

    The target modality (``decoder.var``) is left out of what the latent is inferred from, even when
    ``x_dict`` holds it: the latent comes from the other modalities alone, so that the output is a
    cross generation, not a reconstruction (use `infer_latent` and the decoder for that).

    Args:
        encoders: see `infer_latent`.
        decoder: :math:`p(x_t|z)`, the target modality's decoder.
        x_dict: the source modalities (the target's values, if given, are ignored).
        sample: draw :math:`z` and :math:`x_t` instead of taking means.

    Returns:
        the generated :math:`x_t`, ``(N, *features)``.

    >>> from kizuna.distributions import Normal, ProductOfNormal
    >>> qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    >>> p_y = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0, name="p")
    >>> x, y = torch.full((1, 2), 3.0), torch.full((1, 2), -3.0)
    >>> cross_generate(ProductOfNormal([qx, qy], name="q"), p_y, {"x": x, "y": y})  # z from x alone: 1.5
    tensor([[1.5000, 1.5000]])
    """
    x_dict = values_dict(x_dict, "cross_generate", names=[m for m in modalities(encoders) if m not in decoder.var])
    sources = {k: v for k, v in x_dict.items() if k not in decoder.var}
    targets = [m for m in modalities(encoders) if m in decoder.var]
    if not any(m in sources for m in modalities(encoders)) and any(m in x_dict for m in targets):
        raise ValueError(
            f"cross_generate generates {', '.join(decoder.var)} from the other modalities "
            f"({', '.join(m for m in modalities(encoders) if m not in decoder.var) or 'none'}), but x_dict holds "
            f"only {', '.join(m for m in targets if m in x_dict)}; use infer_latent and the decoder to reconstruct it"
        )
    # numpy arrays and lists of numbers as tensors, for the encoders and the decoder alike
    sources = as_tensors(sources, [k for k in sources if k in modalities(encoders) or k in decoder.cond_var])
    z = _latent(encoders, sources, sample, "cross_generate")
    cond = on_models({**sources, **z}, decoder)
    require(cond, decoder.cond_var, f"cross_generate ({decoder.prob_text})")
    from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

    with torch.no_grad(), evaluating(decoder):
        if sample:
            return decoder.sample(cond, return_all=False)[decoder.var[0]]
        return decoder.sample_mean(cond)


def _labels(values: Any, what: str) -> np.ndarray:
    """Class indices from indices (1-d, or a column (N, 1)) or scores / one-hot rows (2-d, C >= 2: argmax)."""
    arr = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # (argmax read a row of NaN scores as class 0)
        rows = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1)) if arr.ndim else np.array([0])
        raise ValueError(f"coherence: {what} has non-finite values in {len(rows)} row(s) (first: row {rows[0]}); a "
                         "diverged decoder or classifier gives no class")
    if arr.ndim == 2 and arr.shape[1] == 1:  # a column of indices (the argmax of one score is always 0)
        arr = arr[:, 0]
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"coherence: {what} is one column of non-integer values; a column (N, 1) is read as class "
                "indices, not as scores (give the scores of every class, (N, C), or the indices)"
            )
        return arr
    if arr.ndim == 2:
        return arr.argmax(-1)
    if arr.ndim != 1:
        raise ValueError(f"coherence: {what} must be class indices (N,) or scores (N, C), got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):  # (probabilities compared with labels: 0.0)
        raise ValueError(f"coherence: {what} holds non-integer values in one dimension (N,); it is read as class "
                         "indices, not as the probabilities of one class (give the scores of every class, (N, C))")
    return arr


def coherence(generated: Any, target_labels: Any, classifier: Any = None) -> float:
    """Accuracy of ``classifier`` on generated samples against the labels of their sources.

    Args:
        generated: ``(N, ...)`` generated samples (a tensor or array).
        target_labels: the label of each source row: indices ``(N,)`` (or a column ``(N, 1)``) or
            one-hot ``(N, C)``.
        classifier: a scikit-learn style object with ``predict`` (given the samples flattened
            to ``(N, D)`` as numpy), or a callable returning indices or scores (a torch module is given
            the samples as a tensor, floating ones in its dtype, on its device); ``None`` when
            the samples are class scores themselves (a generated label: argmax) or indices.
            Anywhere, one column ``(N, 1)`` holds class indices, not the scores of one class.

    >>> coherence(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    if isinstance(generated, Tensor):
        arr = generated.detach().cpu().numpy()
    else:
        generated = np.asarray(generated)
        arr = generated
    # class indices (N,) stay indices; samples (N, ...) are flattened to rows (N, D) (indices reshaped to (N, 1)
    # were read as scores, every one's argmax 0)
    if arr.ndim == 0:  # (a raw IndexError)
        raise ValueError("coherence: generated must have a leading row dimension (N, ...), got one number")
    if arr.shape[0] == 0:  # (a raw numpy reshape error)
        raise ValueError("coherence: no generated samples")
    flat = arr if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)
    target = _labels(target_labels, "target_labels")
    if flat.shape[0] != target.shape[0]:
        raise ValueError(f"coherence: {flat.shape[0]} generated samples but {target.shape[0]} target labels")
    if classifier is None:
        predicted = _labels(flat, "generated")
    elif hasattr(classifier, "predict"):  # the scikit-learn protocol
        predicted = _labels(classifier.predict(flat), "the classifier's predictions")
    elif callable(classifier):
        from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

        # a network scores in eval mode (dropout off), its own modes given back, as every helper here runs networks
        network = isinstance(classifier, torch.nn.Module)
        if network:  # as every helper takes data: a tensor, floating samples in its dtype, on its device (numpy or
            # float64 samples failed inside a float32 network with torch's own error)
            samples = generated if isinstance(generated, Tensor) else torch.from_numpy(np.ascontiguousarray(generated))
            generated = on_models({"generated": samples}, classifier)["generated"]
        with torch.no_grad(), evaluating(*([classifier] if network else [])):
            predicted = _labels(classifier(generated), "the classifier's output")
    else:
        raise TypeError(f"coherence: classifier must have predict() or be callable, got {type(classifier).__name__}")
    return float((predicted == target).mean())
