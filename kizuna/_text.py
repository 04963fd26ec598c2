"""Formula rendering shared by distributions and losses.

Two renderings exist for every formula: plain text (what ``print`` shows) and LaTeX
(``to_latex()``). Nodes pick a template by key from one of the tables below, so the two
renderings never drift apart in structure.
"""

from __future__ import annotations

import re

TEXT: dict[str, str] = {
    "log": "log {0}",
    "expect": "E_{{{0}}}[{1}]",
    "kl": "KL[{0}||{1}]",
    "entropy": "H[{0}]",
    "cross_entropy": "H[{0}||{1}]",
    "mean": "mean({0})",
    "sum": "sum({0})",
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


def prob_text(name: str, var: list[str], cond_var: list[str]) -> str:
    """``name(var|cond_var)`` with comma-separated names.

    >>> prob_text("p", ["x", "z"], ["y"])
    'p(x,z|y)'
    """
    text = f"{format_name(name)}({','.join(var)}"
    if cond_var:
        text += f"|{','.join(cond_var)}"
    return text + ")"
