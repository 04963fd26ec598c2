"""Formula rendering shared by distributions and losses.

Two renderings exist for every formula: plain text (what ``print`` shows) and LaTeX
(``to_latex()``). Nodes pick a template by key from one of the tables below, so the two
renderings never drift apart in structure.
"""

from __future__ import annotations

import re
from typing import Any

TEXT: dict[str, str] = {
    "log": "log {0}",
    "expect": "E_{{{0}}}[{1}]",
    "kl": "KL[{0}||{1}]",
    "entropy": "H[{0}]",
    "cross_entropy": "H[{0}||{1}]",
    "mean": "mean({0})",
    "sum": "sum({0})",
    "detach": "detach({0})",
    "abs": "|{0}|",
    "neg": "-{0}",
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "pow": "{0}^{1}",
    "paren": "({0})",
    "min": "min({0}, {1})",
    "max": "max({0}, {1})",
    "iwae": "log 1/{2} sum_k {0}/{1}",
    "mmd": "MMD^2_{{{2}}}[{0}, {1}]",
    "wasserstein": "W^{{upper}}[{0}, {1}]",
    "integral": "∫ {0}d{1}",
    "reinforce": "E_{{{0}}}[{1}] (REINFORCE)",
    "mixture": "sum_{{{0}}} {1}",
    "proportional": "{0} ∝ {1}",
    "std_normal": "N({0};0,I)",
    "prod": "prod_{{{0}}} {1}",
    "weighted": "w_{0} {1}",
}

LATEX: dict[str, str] = {
    "log": r"\log {0}",
    "expect": r"\mathbb{{E}}_{{{0}}}\left[{1}\right]",
    "kl": r"D_{{\mathrm{{KL}}}}\left[{0}\,\|\,{1}\right]",
    "entropy": r"H\left[{0}\right]",
    "cross_entropy": r"H\left[{0}\,\|\,{1}\right]",
    "mean": r"\operatorname{{mean}}\left({0}\right)",
    "sum": r"\operatorname{{sum}}\left({0}\right)",
    "detach": r"\operatorname{{detach}}\left({0}\right)",
    "abs": r"\left|{0}\right|",
    "neg": "-{0}",
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": r"{0} \cdot {1}",
    "div": r"\frac{{{0}}}{{{1}}}",
    "pow": "{{{0}}}^{{{1}}}",
    "paren": r"\left({0}\right)",
    "min": r"\min\left({0}, {1}\right)",
    "max": r"\max\left({0}, {1}\right)",
    "iwae": r"\log \frac{{1}}{{{2}}}\sum_{{k=1}}^{{{2}}} \frac{{{0}}}{{{1}}}",
    "mmd": r"D_{{\mathrm{{MMD}}^2}}^{{{2}}}\left[{0}, {1}\right]",
    "wasserstein": r"W^{{upper}}\left[{0}, {1}\right]",
    "integral": r"\int {0}d{1}",
    "reinforce": r"\mathbb{{E}}_{{{0}}}\left[{1}\right]_{{\mathrm{{REINFORCE}}}}",
    "mixture": r"\sum_{{{0}}} {1}",
    "proportional": r"{0} \propto {1}",
    "std_normal": r"\mathcal{{N}}\left({0};0,I\right)",
    "prod": r"\prod_{{{0}}} {1}",
    "weighted": "w_{{{0}}} {1}",
}

_SUBSCRIPT = re.compile(r"^([^_{}]+)_([^{}]+)$")


def format_name(name: str) -> str:
    """Write a distribution name with a braced subscript: ``p_prior`` -> ``p_{prior}``.

    >>> format_name("p_prior"), format_name("p_{prior}"), format_name("q")
    ('p_{prior}', 'p_{prior}', 'q')
    """
    match = _SUBSCRIPT.match(name)
    return f"{match.group(1)}_{{{match.group(2)}}}" if match else name


_LATEX_SPECIAL = frozenset("%#&$")


def latex_name(name: str) -> str:
    """A name made safe for LaTeX: ``z_1`` -> ``z_{1}``, ``z_t_1`` -> ``z_{t_1}`` (the first underscore opens one
    braced subscript that holds the rest, so that there is no double subscript); a Greek letter's name before it
    becomes the letter, as Pixyz writes it (``mu_var`` -> ``\\mu_{var}``, ``sigma`` -> ``\\sigma``); a subscript
    already in braces (``x_{t-1}``) and LaTeX commands (``\\hat{x}``) are kept; LaTeX's special characters
    ``% # & $`` are escaped (``x%`` -> ``x\\%``), which would otherwise start a comment, an alignment or end the
    formula.

    >>> latex_name("z_t_1"), latex_name("x_{t-1}"), latex_name("p_{a}_b"), latex_name("p%")
    ('z_{t_1}', 'x_{t-1}', 'p_{{a}_b}', 'p\\\\%')
    >>> latex_name("mu_var"), latex_name("theta"), latex_name("mus")
    ('\\\\mu_{var}', '\\\\theta', 'mus')
    """
    name = "".join("\\" + c if c in _LATEX_SPECIAL and (i == 0 or name[i - 1] != "\\") else c
                   for i, c in enumerate(name))
    depth, split = 0, -1
    for i, c in enumerate(name):  # the first underscore outside braces
        depth += (c == "{") - (c == "}")
        if c == "_" and depth == 0:
            split = i
            break
    head, tail = (name, None) if split < 0 else (name[:split], name[split + 1:])
    if head in GREEK:
        head = "\\" + head
    if tail is None:
        return head
    if tail.startswith("{") and _group_end(tail) == len(tail) - 1:
        return f"{head}_{tail}"  # already one braced subscript
    return f"{head}_{{{tail}}}"


# the Greek letters LaTeX names (a variable named after one is written as the letter)
GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi rho "
    "varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi "
    "Psi Omega".split())


def _group_end(text: str) -> int:
    """The index of the brace that closes the group ``text`` opens (-1 if unbalanced)."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return i
    return -1


def prob_text(name: str, var: list[str], cond_var: list[str], fmt: dict[str, str] | None = None) -> str:
    """``name(var|cond_var)`` with comma-separated names; with ``fmt=LATEX`` every name is made LaTeX-safe
    (`latex_name`).

    >>> prob_text("p", ["x", "z"], ["y"]), prob_text("p_prior", ["z_t_1"], [], LATEX)
    ('p(x,z|y)', 'p_{prior}(z_{t_1})')
    """
    if fmt is LATEX:
        name, var, cond_var = latex_name(name), [latex_name(v) for v in var], [latex_name(v) for v in cond_var]
    else:
        name = format_name(name)
    text = f"{name}({','.join(var)}"
    if cond_var:
        text += f"|{','.join(cond_var)}"
    return text + ")"


def var_text(name: str, fmt: dict[str, str]) -> str:
    """A variable's name in the format ``fmt`` (LaTeX-safe for LaTeX, as is for text)."""
    return latex_name(name) if fmt is LATEX else name


def symbol(p: Any, fmt: dict[str, str]) -> str:
    """A distribution's symbol ``p(x|z)`` in the format ``fmt`` (its ``prob_text``, LaTeX-safe for LaTeX)."""
    return p.prob_latex if fmt is LATEX and hasattr(p, "prob_latex") else p.prob_text
