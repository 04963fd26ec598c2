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
