"""A product's variables are listed in Pixyz's order (found by review F, stop 44: Pixyz's graph lists its nodes in
insertion order, each factor adding its variables and then its conditions). The expected lists are Pixyz 0.3.3's
output for the same products (its distributions example and a hand case), checked by running both libraries."""

import pytest

from kizuna.distributions import Normal


def _normal(var: str, cond: list[str]) -> Normal:
    return Normal(loc=cond[0] if cond else 0.0, scale=1.0, var=[var], cond_var=cond)


@pytest.mark.parametrize("factors, var, cond", [
    # a later factor supplies an earlier factor's condition: kizuna listed ['x', 'z', 'y'] (the factors' order)
    ([("x", ["y"]), ("z", ["x"]), ("y", [])], ["x", "y", "z"], []),
    # Pixyz's distributions example, p1 * p2 * p4 * p6 (p1(x|y,a), p2(z|x,y), p4(a), p6(y)): kizuna gave x, z, a, y
    ([("x", ["y", "a"]), ("z", ["x", "y"]), ("a", []), ("y", [])], ["x", "y", "a", "z"], []),
    # M2's generative model p(x|z,y) p(y) p(z): Pixyz's x, z, y (kizuna gave x, y, z)
    ([("x", ["z", "y"]), ("y", []), ("z", [])], ["x", "z", "y"], []),
    # already in order: unchanged
    ([("x", ["z"]), ("z", [])], ["x", "z"], []),
    ([("z", ["w"]), ("x", ["z", "c"])], ["z", "x"], ["w", "c"]),
])
def test_product_lists_variables_in_pixyz_order(factors, var, cond) -> None:
    joint = _normal(*factors[0])
    for f in factors[1:]:
        joint = joint * _normal(*f)
    assert joint.var == var and joint.cond_var == cond


def test_nested_products_follow_the_same_order() -> None:
    """``a * (b * c)`` lists what ``(a * b) * c`` lists (Pixyz unites the graphs in the same insertion order)."""
    a, b, c = _normal("x", ["y"]), _normal("z", ["x"]), _normal("y", [])
    assert (a * (b * c)).var == ((a * b) * c).var == ["x", "y", "z"]
    assert str(a * b * c) == "p(x,y,z) = p(x|y)p(z|x)p(y)"


def test_renamed_and_marginalised_products_follow_pixyz() -> None:
    """Pixyz 0.3.3's lists for the same products (diff review 1, stop 44: Pixyz renames a product's graph nodes in
    place, so renamed variables come last, in the renaming's order; a single distribution keeps its order)."""
    j = _normal("x", ["z"]) * _normal("y", []) * _normal("z", [])
    assert j.var == ["x", "z", "y"]
    assert j.replace_var(z="u").var == ["x", "y", "u"]
    assert j.replace_var(z="u", y="v").var == ["x", "u", "v"]
    assert (_normal("w", ["z"]) * j.marginalize_var("y")).var == ["w", "z", "x"]
    assert (_normal("a", ["u"]) * j.replace_var(z="u")).var == ["a", "u", "x", "y"]
    ext = _normal("x", ["z", "c"]) * _normal("y", ["w"]) * _normal("z", [])
    assert ext.var == ["x", "z", "y"] and ext.cond_var == ["c", "w"]
    assert _normal("x", ["z"]).replace_var(x="a", z="b").var == ["a"]
