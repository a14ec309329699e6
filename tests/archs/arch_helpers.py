"""Helpers shared by the architecture tests: scoped expert registration and which forward ran."""

from contextlib import contextmanager

from gmmoe_arch.archs.experts import EXPERT_REGISTRY, ColourExpert, DetailExpert, FeatureExpert
from gmmoe_arch.archs.gmmoe_arch import SFEB

from helpers import registered

FAST_MODULES = (SFEB, ColourExpert, DetailExpert, FeatureExpert)


def registered_expert(cls):
    """``cls`` in ``EXPERT_REGISTRY`` within the block only."""
    return registered(EXPERT_REGISTRY, cls)


@contextmanager
def paths_taken():
    """Yields a list that collects ``'fast'`` / ``'plain'`` for every forward of a built-in fast module
    (SFEB and the three experts) run within the block."""
    taken, saved = [], []
    for cls in FAST_MODULES:
        for kind in ('fast', 'plain'):
            name = f'forward_{kind}'
            original = cls.__dict__[name]
            saved.append((cls, name, original))

            def recording(self, x, original=original, kind=kind):
                taken.append(kind)
                return original(self, x)

            setattr(cls, name, recording)
    try:
        yield taken
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)
