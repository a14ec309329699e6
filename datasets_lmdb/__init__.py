"""Pack paired image datasets into LMDBs that ``LLIEPairedDataset`` (and BasicSR) read fast.

Command line: ``datasets_lmdb pack|verify|presets|synth ...`` (or ``python -m datasets_lmdb``); see
``docs/data.md``. Python API:

* :func:`pack_pairs` ``(lq_dir, gt_dir, out_dir, pair_rule='identical', form=None, workers=None,
  progress=True, overwrite=False, skip_unpaired=False) -> int``: ``out_dir/{lq,gt}.lmdb``.
* :func:`pack_preset` ``(preset, root, out_dir, **kwargs) -> {split: int}``:
  ``out_dir/{train,val}/{lq,gt}.lmdb`` from a known dataset tree (:data:`PRESETS`).
* :func:`synthesize` ``(src, out, degradation, seed=0, per_image=1, lmdb=False, ...)`` and
  :func:`synthesize_images` ``(images, out, degradation, ...)``: paired low-light / rain / haze / mixed sets
  (labelled per pair) from a folder or from ``(name, image)`` pairs; see ``datasets_lmdb.synth``.
* :func:`verify` ``(path, progress=True, notes=None) -> (checked, problems)``: decode and check every
  entry (checksums, shapes, keys, lq/gt pack runs); :func:`find_leftovers` names interrupted packs.

Bad data raises :class:`~gmmoe_arch.data.image_io.DataError`; a busy output folder or a failed write
(a full disk) raises :class:`~datasets_lmdb.output.PackError`, each with a one-line message.
"""

from .output import PackError
from .pack import DEFAULT_FORM, FORMS, find_pairs, pack_pairs
from .presets import PRESETS, pack_preset, preset_tree
from .synth import synthesize, synthesize_images
from .verify import find_leftovers, verify

__all__ = [
    'DEFAULT_FORM',
    'FORMS',
    'PRESETS',
    'PackError',
    'find_leftovers',
    'find_pairs',
    'pack_pairs',
    'pack_preset',
    'preset_tree',
    'synthesize',
    'synthesize_images',
    'verify',
]
