"""`Estimator`: scikit-learn's estimator protocol, written without importing scikit-learn.

scikit-learn is an optional dependency of kizuna, so the classical modules do not inherit its
``BaseEstimator``; they follow its contract instead (the scikit-learn developer guide):

* every constructor parameter is stored unchanged under its own name, and validated in ``fit``;
* `Estimator.get_params` / `Estimator.set_params` read the constructor's signature (nested
  ``component__param`` names included), so ``sklearn.base.clone``, ``GridSearchCV`` and pipelines work;
* ``__sklearn_tags__`` (read by scikit-learn only, which imports itself then) and
  ``__sklearn_is_fitted__`` tell ``check_estimator`` and ``check_is_fitted`` what the estimator is;
* arrays in give arrays out, tensors give tensors (`Estimator._out`).

>>> from kizuna.modules.gmm import GaussianMixture
>>> est = GaussianMixture(3, algorithm="em")
>>> est.get_params()["algorithm"], est.set_params(max_iter=5).max_iter
('em', 5)
>>> est
GaussianMixture(n_components=3, algorithm='em', max_iter=5)
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from kizuna.modules.validation import not_fitted


class Estimator:
    """Base of the scikit-learn facades (see the module docstring)."""

    estimator_type: ClassVar[str | None] = None  # scikit-learn's estimator_type tag ("density_estimator", ...)
    positive_input: ClassVar[bool] = False  # X must be non-negative (counts)

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The constructor's parameter names, in order (scikit-learn's rule: no ``*args``)."""
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            raise RuntimeError(f"{cls.__name__}.__init__ must name its parameters (no *args)")
        return [p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters and their values (``deep``: also ``name__param`` of nested estimators)."""
        out = {}
        for name in self._get_param_names():
            value = self._param(name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Estimator:
        """Set constructor parameters (validated at the next ``fit``; a class module derives at once what its
        constructor derives from them: ``category`` labels, ``n_classes``); returns ``self``."""
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {valid!r}.")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                self._set_param(name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def _param(self, name: str) -> Any:
        """The value of constructor parameter ``name`` as given (a subclass may keep it under another attribute)."""
        return getattr(self, name)

    def _set_param(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def __repr__(self) -> str:
        """The class and the parameters that differ from their defaults, scikit-learn style."""
        return f"{type(self).__name__}({', '.join(changed_params(self))})"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags (only scikit-learn calls this, so importing it here is safe)."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        tags = Tags(estimator_type=self.estimator_type, target_tags=TargetTags(required=False),
                    input_tags=InputTags(positive_only=self.positive_input))
        if hasattr(self, "transform"):
            tags.transformer_tags = TransformerTags()
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` has run (each estimator says what it needs)."""
        return self._is_fitted()

    def _is_fitted(self) -> bool:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            name = getattr(self, "name", None)
            who = f"{type(self).__name__} {name}" if name else type(self).__name__
            raise not_fitted(f"{who} is not fitted yet: call fit(X) (or update() in a graph) first")

    @staticmethod
    def _out(value: torch.Tensor, like: Any) -> Any:
        """Arrays in give arrays out; tensors give tensors."""
        return value if isinstance(like, torch.Tensor) else value.detach().cpu().numpy()


def changed_params(obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """``name=value`` for each constructor parameter of ``obj`` whose attribute differs from its default."""
    shown = []
    for p in list(inspect.signature(type(obj).__init__).parameters.values())[1:]:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(obj, p.name):
            continue
        value = getattr(obj, p.name)
        if p.default is inspect.Parameter.empty or not _same(value, p.default):
            shown.append(f"{p.name}={_short(value)}")
    return shown


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays and tensors compare elementwise
        return False


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor) or hasattr(value, "shape"):
        return f"<{type(value).__name__} of shape {tuple(value.shape)}>"
    if isinstance(value, torch.nn.Module):
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
