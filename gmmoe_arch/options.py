"""Checks of option values shared by the option readers (the ``basicsr`` command, the network, the model, the
datasets, the experts): one spelling of "a number" and "an integer", each leaving bools out.

YAML's ``true``/``false`` load as Python bools, which are ints: without the bool exclusion ``repeat: true``
would read as 1. Stdlib only, so any module can import it.
"""

import numbers


def is_number(value) -> bool:
    """Whether ``value`` is a real number (an int or a float, numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value, integral_float: bool = False) -> bool:
    """Whether ``value`` is an int, not a bool; with ``integral_float``, a float of integral value counts too
    (YAML reads ``5e3`` and ``!!float 5000`` as floats)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (integral_float and isinstance(value, float) and value.is_integer())
