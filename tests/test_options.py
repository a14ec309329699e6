"""gmmoe_arch.options: "a number" and "an integer", bools left out, as every option reader checks them."""

import pytest

from gmmoe_arch.options import is_integer, is_number


@pytest.mark.parametrize(
    'value, number, integer, integral',
    [
        (3, True, True, True),
        (0, True, True, True),
        (2.5, True, False, False),
        (5e3, True, False, True),  # YAML's 5e3: a float of integral value
        (True, False, False, False),  # YAML's true is a bool, which Python counts as an int
        (False, False, False, False),
        ('3', False, False, False),  # a quoted YAML number
        (None, False, False, False),
        ([1], False, False, False),
    ],
)
def test_numbers_and_integers_leave_bools_out(value, number, integer, integral):
    assert is_number(value) is number
    assert is_integer(value) is integer
    assert is_integer(value, integral_float=True) is integral


def test_numpy_numbers_count_as_numbers():
    """A value computed with numpy (a seed from a generator, a size from an array) is a number too."""
    import numpy as np

    assert is_integer(np.int64(3)) and is_number(np.int64(3)) and is_number(np.float32(0.5))
    assert not is_integer(np.float32(0.5)) and not is_number(np.bool_(True))
