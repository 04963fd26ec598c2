"""simulated_house's number checks (review of kizuna/datasets/house.py): a string is refused by name, with the
"simulated_house:" prefix of its other checks."""

import re

import numpy as np
import pytest

from kizuna.datasets import simulated_house
from kizuna.datasets.house import view_distributions


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"phoneme_error_rate": "0.1"}, "phoneme_error_rate must be a finite number >= 0, got '0.1'"),
    ({"name_rate": "0.8"}, "name_rate must be a finite number >= 0, got '0.8'"),
    ({"position_noise": "0.2"}, "position_noise must be a finite number >= 0, got '0.2'"),
    ({"view_noise": "0.5"}, "view_noise must be a finite number >= 0, got '0.5'"),
    ({"margin": "0.1"}, "margin must lie in [0, 0.5) metres (half the narrowest area's side), got '0.1'"),
    ({"phoneme_error_rate": 2.0}, "phoneme_error_rate must be in [0, 1], got 2.0"),
    ({"name_rate": float("nan")}, "name_rate must be a finite number >= 0, got nan"),
    ({"view_noise": 1.5}, "view_noise must be in [0, 1], got 1.5"),
    ({"view_noise": True}, "view_noise must be a finite number >= 0, got True"),
    ({"position_noise": float("inf")}, "position_noise must be a finite number >= 0, got inf"),
    ({"margin": True}, "margin must lie in [0, 0.5) metres (half the narrowest area's side), got True"),
])
def test_each_number_is_checked_by_name(kwargs, message):
    """Strings raised raw TypeErrors ("'<=' not supported between instances of 'int' and 'str'"), and view_noise's
    message lacked the "simulated_house:" prefix."""
    with pytest.raises(ValueError, match="^" + re.escape(f"simulated_house: {message}") + "$"):
        simulated_house(10, **kwargs)


def test_view_distributions_names_its_argument_too():
    with pytest.raises(ValueError, match=r"^simulated_house: view_noise must be a finite number >= 0, got -0.5$"):
        view_distributions(-0.5)
    with pytest.raises(ValueError, match=r"^simulated_house: view_noise must be in \[0, 1\], got 2$"):
        view_distributions(2)
    np.testing.assert_allclose(view_distributions(1.0), 1 / view_distributions(1.0).shape[1])  # all background


def test_numpy_numbers_are_numbers():
    a = simulated_house(20, seed=1, phoneme_error_rate=np.float32(0.25), position_noise=np.float64(0.2),
                        name_rate=np.float64(0.8), view_noise=np.float64(0.5), margin=np.float64(0.3))
    b = simulated_house(20, seed=1, phoneme_error_rate=0.25, position_noise=0.2)
    np.testing.assert_array_equal(a["position"], b["position"])
