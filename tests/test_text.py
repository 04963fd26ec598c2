"""Formula text and LaTeX of distributions: ``print(p * prior)``, ``prob_text``, ``to_latex()``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kizuna._text import format_name, prob_text
from kizuna.distributions import Distribution, EmpiricalDistribution, Normal


def link(var: str, parent: str, name: str = "p") -> Normal:
    return Normal(var=[var], cond_var=[parent], loc=parent, scale=1.0, name=name)


def root(var: str, name: str = "p") -> Normal:
    return Normal(var=[var], loc=0.0, scale=1.0, name=name)


def p_x_z() -> Normal:
    return link("x", "z")


def prior() -> Normal:
    return root("z", "p_prior")


@pytest.mark.parametrize("prior_name", ["p_prior", "p_{prior}"])
def test_print_product(prior_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    print(p_x_z() * root("z", prior_name))
    assert capsys.readouterr().out == "p(x,z) = p(x|z)p_{prior}(z)\n"


# (builder, prob_text, prob_factorized_text, prob_joint_factorized_and_text, to_latex())
CASES: dict[str, tuple[Callable[[], Distribution], str, str, str, str]] = {
    "prior": (prior, "p_{prior}(z)", "p_{prior}(z)", "p_{prior}(z)", "p_{prior}(z)"),
    "conditional": (p_x_z, "p(x|z)", "p(x|z)", "p(x|z)", "p(x|z)"),
    "two-conditions": (
        lambda: Normal(var=["x"], cond_var=["z", "y"], loc="z", scale=1.0, name="q"),
        "q(x|z,y)", "q(x|z,y)", "q(x|z,y)", "q(x|z,y)",
    ),
    "joint": (
        lambda: p_x_z() * prior(),
        "p(x,z)", "p(x|z)p_{prior}(z)", "p(x,z) = p(x|z)p_{prior}(z)", "p(x,z) = p(x|z)p_{prior}(z)",
    ),
    "joint-prior-first": (
        lambda: prior() * p_x_z(),  # named after the first operand, as Pixyz names a product
        "p_{prior}(z,x)", "p_{prior}(z)p(x|z)", "p_{prior}(z,x) = p_{prior}(z)p(x|z)",
        "p_{prior}(z,x) = p_{prior}(z)p(x|z)",
    ),
    "conditional-joint": (
        lambda: p_x_z() * link("z", "y", "q"),
        "p(x,z|y)", "p(x|z)q(z|y)", "p(x,z|y) = p(x|z)q(z|y)", "p(x,z|y) = p(x|z)q(z|y)",
    ),
    "joint-one-name": (
        lambda: link("x", "z", "q") * root("z", "q"),
        "q(x,z)", "q(x|z)q(z)", "q(x,z) = q(x|z)q(z)", "q(x,z) = q(x|z)q(z)",
    ),
    "marginal": (
        lambda: (p_x_z() * prior()).marginalize_var("z"),
        "p(x)", "∫ p(x|z)p_{prior}(z)dz", "p(x) = ∫ p(x|z)p_{prior}(z)dz", r"p(x) = \int p(x|z)p_{prior}(z)dz",
    ),
    "marginal-two-vars": (
        lambda: (p_x_z() * link("z", "w") * root("w")).marginalize_var(["z", "w"]),
        "p(x)", "∫ ∫ p(x|z)p(z|w)p(w)dzdw", "p(x) = ∫ ∫ p(x|z)p(z|w)p(w)dzdw",
        r"p(x) = \int \int p(x|z)p(z|w)p(w)dzdw",
    ),
    "conditional-marginal": (
        lambda: (p_x_z() * link("z", "y", "q")).marginalize_var("z"),
        "p(x|y)", "∫ p(x|z)q(z|y)dz", "p(x|y) = ∫ p(x|z)q(z|y)dz", r"p(x|y) = \int p(x|z)q(z|y)dz",
    ),
    "replaced": (lambda: p_x_z().replace_var(z="y"), "p(x|y)", "p(x|y)", "p(x|y)", "p(x|y)"),
    "replaced-swap": (lambda: p_x_z().replace_var(x="z", z="x"), "p(z|x)", "p(z|x)", "p(z|x)", "p(z|x)"),
    "replaced-joint": (
        lambda: (p_x_z() * prior()).replace_var(z="y"),
        "p(x,y)", "p(x|y)p_{prior}(y)", "p(x,y) = p(x|y)p_{prior}(y)", "p(x,y) = p(x|y)p_{prior}(y)",
    ),
    "replaced-twice": (
        lambda: (p_x_z() * prior()).replace_var(z="y").replace_var(y="w", x="u"),
        "p(u,w)", "p(u|w)p_{prior}(w)", "p(u,w) = p(u|w)p_{prior}(w)", "p(u,w) = p(u|w)p_{prior}(w)",
    ),
    "replaced-marginal": (
        lambda: (p_x_z() * prior()).marginalize_var("z").replace_var(x="u"),
        "p(u)", "∫ p(u|z)p_{prior}(z)dz", "p(u) = ∫ p(u|z)p_{prior}(z)dz", r"p(u) = \int p(u|z)p_{prior}(z)dz",
    ),
    "marginal-of-replaced": (
        lambda: (p_x_z() * prior()).replace_var(z="w").marginalize_var("w"),
        "p(x)", "∫ p(x|w)p_{prior}(w)dw", "p(x) = ∫ p(x|w)p_{prior}(w)dw", r"p(x) = \int p(x|w)p_{prior}(w)dw",
    ),
    # renaming x to the integrated variable's name must not capture it
    "replace-into-bound-name": (
        lambda: (p_x_z() * prior()).marginalize_var("z").replace_var(x="z"),
        "p(z)", "∫ p(z|z')p_{prior}(z')dz'", "p(z) = ∫ p(z|z')p_{prior}(z')dz'",
        r"p(z) = \int p(z|z')p_{prior}(z')dz'",
    ),
    # inside a product, an integral is bracketed so its scope stays visible
    "marginal-in-product": (
        lambda: (p_x_z() * prior()).marginalize_var("z") * link("z", "x", "r"),
        "p(x,z)", "(∫ p(x|z)p_{prior}(z)dz)r(z|x)", "p(x,z) = (∫ p(x|z)p_{prior}(z)dz)r(z|x)",
        r"p(x,z) = \left(\int p(x|z)p_{prior}(z)dz\right)r(z|x)",
    ),
    # an outer renaming reaches the free z of r, not the bound z of the integral
    "renamed-product-with-marginal": (
        lambda: ((p_x_z() * prior()).marginalize_var("z") * link("z", "x", "r")).replace_var(z="w"),
        "p(x,w)", "(∫ p(x|z)p_{prior}(z)dz)r(w|x)", "p(x,w) = (∫ p(x|z)p_{prior}(z)dz)r(w|x)",
        r"p(x,w) = \left(\int p(x|z)p_{prior}(z)dz\right)r(w|x)",
    ),
    "renamed-marginal-in-product": (
        lambda: (p_x_z() * prior()).marginalize_var("z").replace_var(x="u") * link("z", "u", "r"),
        "p(u,z)", "(∫ p(u|z)p_{prior}(z)dz)r(z|u)", "p(u,z) = (∫ p(u|z)p_{prior}(z)dz)r(z|u)",
        r"p(u,z) = \left(\int p(u|z)p_{prior}(z)dz\right)r(z|u)",
    ),
    "empirical-product": (
        lambda: link("z", "x", "q") * EmpiricalDistribution(var=["x"]),
        "q(z,x)", "q(z|x)p_{data}(x)", "q(z,x) = q(z|x)p_{data}(x)", "q(z,x) = q(z|x)p_{data}(x)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_formula_text(case: str) -> None:
    build, text, factorized, joint, latex = CASES[case]
    d = build()
    assert d.prob_text == text
    assert d.prob_factorized_text == factorized
    assert d.prob_joint_factorized_and_text == joint
    assert str(d) == joint
    assert d.to_latex() == latex


def test_latex_and_text_differ_only_in_symbols() -> None:
    """The LaTeX has no unicode integral and the text no backslash."""
    for case, (build, *_rest) in CASES.items():
        d = build()
        assert "∫" not in d.to_latex() and "\\" not in str(d), case


@pytest.mark.parametrize(("name", "formatted"), [
    ("p", "p"), ("p_prior", "p_{prior}"), ("p_{prior}", "p_{prior}"), ("q_1", "q_{1}"), ("p_{data}", "p_{data}"),
])
def test_format_name(name: str, formatted: str) -> None:
    assert format_name(name) == formatted
    assert prob_text(name, ["x"], []) == f"{formatted}(x)"


def test_name_with_subscript_in_a_distribution() -> None:
    d = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q_phi")
    assert d.name == "q_phi" and d.prob_text == "q_{phi}(z|x)"


@pytest.mark.parametrize(("name", "latex"), [
    ("z_t_1", "z_{t_1}"), ("x_{t-1}", "x_{t-1}"), ("p_{a}_b", "p_{{a}_b}"), ("p%", "p\\%"), ("p#1", "p\\#1"),
    ("p&q", "p\\&q"), ("\\hat{x}_1", "\\hat{x}_{1}"), ("q_phi", "q_{phi}"), ("x", "x"),
])
def test_latex_name(name: str, latex: str) -> None:
    from kizuna._text import latex_name

    assert latex_name(name) == latex


def test_latex_of_awkward_names_compiles() -> None:
    """Names with several underscores or LaTeX's special characters give LaTeX that compiles (checked with
    matplotlib's mathtext); the plain text keeps the names as given."""
    import io

    mathtext = pytest.importorskip("matplotlib.mathtext")
    from kizuna.losses import Expectation, KullbackLeibler, LogProb

    cases = [
        LogProb(root("z_t_1")), LogProb(root("z", "p_{a}_b")), LogProb(root("z", "q_phi_1")),
        LogProb(root("z", "p%")), LogProb(root("z", "p#1")), LogProb(link("x_t_1", "z_t_1")),
        KullbackLeibler(link("z_t", "x_t_1", "q_phi_1"), root("z_t", "p_prior_1")),
        Expectation(link("z_a_b", "x", "q"), LogProb(link("x", "z_a_b"))),
        root("z_1_2") * link("x_1", "z_1_2", "p_{a}_b"),
    ]
    for formula in cases:
        latex = formula.to_latex()
        mathtext.math_to_image(f"${latex}$", io.BytesIO(), format="png")
    assert str(cases[0]) == "log p(z_t_1)" and cases[0].to_latex() == "\\log p(z_{t_1})"
    assert str(cases[3]) == "log p%(z)" and cases[3].to_latex() == "\\log p\\%(z)"


def test_greek_variable_names_are_written_as_letters_in_latex_as_pixyz_writes_them():
    """A variable named after a Greek letter is the letter in LaTeX (Pixyz's tutorial prints ``p(x|\\mu_{var})`` for
    ``cond_var=["mu_var"]``; kizuna wrote ``mu_{var}``); other names, and a Greek name inside a longer word, are
    unchanged; the plain-text form keeps the names as given; `kizuna.utils.convert_latex_name` is the same rule."""
    from kizuna.distributions import Normal
    from kizuna.utils import convert_latex_name, print_latex

    p = Normal(var=["x"], cond_var=["mu_var"], loc="mu_var", scale=1.0)
    assert print_latex(p).data == r"p(x|\mu_{var})"
    assert p.prob_text == "p(x|mu_var)"
    q = Normal(var=["sigma"], cond_var=["alpha", "mus", "z_1"], loc="alpha", scale=1.0, name="q")
    assert print_latex(q).data == r"q(\sigma|\alpha,mus,z_{1})"
    assert [convert_latex_name(n) for n in ("mu_var", "theta", "x_1", "Omega_{t-1}")] == \
        [r"\mu_{var}", r"\theta", "x_{1}", r"\Omega_{t-1}"]
