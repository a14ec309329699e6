"""GM-MoE low-light enhancement as a BasicSR plug-in.

Importing this package applies :mod:`gmmoe_arch.compat` (basicsr 1.4.2 on current torch) and fills
BasicSR's registries with the GM-MoE arch, losses, metrics, datasets and models, each as ``<Name>_gmmoe`` and,
while no other package holds it, as ``<Name>`` (:mod:`gmmoe_arch.registry`).
"""

from . import compat

compat.apply()

from . import archs, data, losses, metrics, models, spandrel_hook  # noqa: E402,F401  (registration, spandrel support)
from .archs.experts import EXPERT_REGISTRY  # noqa: E402
from .archs.gates import GATE_REGISTRY  # noqa: E402
from .archs.gmmoe_arch import PRESETS, GMMoE, record_gates  # noqa: E402
from .archs.pooling import global_mean, pooling_hook  # noqa: E402
from .enhance import EnhanceError, enhance_image, enhance_paths, load_network  # noqa: E402

__version__ = '0.1.0'
__all__ = [
    'EXPERT_REGISTRY',
    'EnhanceError',
    'GATE_REGISTRY',
    'GMMoE',
    'PRESETS',
    'enhance_image',
    'enhance_paths',
    'global_mean',
    'load_network',
    'pooling_hook',
    'record_gates',
    '__version__',
]
