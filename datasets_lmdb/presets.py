"""On-disk layouts of the public low-light, deraining and dehazing datasets, and packing them split by split.

Expected trees under ``--root`` (the folder you unpacked the download into)::

    LOL-v1 (lol_v1)                    LOL-v2 Real (lol_v2_real)
    <root>/our485/low/*.png   train    <root>/Real_captured/Train/Low/low00001.png     train
    <root>/our485/high/*.png           <root>/Real_captured/Train/Normal/normal00001.png
    <root>/eval15/low/*.png   val      <root>/Real_captured/Test/Low/low00690.png      val
    <root>/eval15/high/*.png           <root>/Real_captured/Test/Normal/normal00690.png

    LOL-v2 Synthetic (lol_v2_synthetic)          LSRW (lsrw_huawei, lsrw_nikon)
    <root>/Synthetic/Train/Low/r000da54ft.png    <root>/Training data/Huawei/low/*.jpg   train
    <root>/Synthetic/Train/Normal/r000da54ft.png <root>/Training data/Huawei/high/*.jpg
    <root>/Synthetic/Test/Low/*.png       val    <root>/Eval/Huawei/low/*.jpg            val
    <root>/Synthetic/Test/Normal/*.png           <root>/Eval/Huawei/high/*.jpg
                                                 (Nikon: the same with Nikon)

    Rain100L / Rain100H (rain100l, rain100h): rain-NNN <-> norain-NNN (RainTrainL/H for train)
    <root>/train/rain/rain-1.png      train    <root>/test/rain/rain-001.png      val
    <root>/train/norain/norain-1.png           <root>/test/norain/norain-001.png

    RESIDE (many hazy images per clear one: NNNN_<A>_<beta> or NNNN_<k>[_<beta>] <-> NNNN, any extensions)
    SOTS indoor (reside_sots_indoor)  <root>/indoor/hazy/1400_1.png       <root>/indoor/gt/1400.png       val
    SOTS outdoor (reside_sots_outdoor) <root>/outdoor/hazy/0001_0.8_0.2.jpg <root>/outdoor/gt/0001.png    val
    ITS (reside_its)                  <root>/hazy/1_1_0.90179.png         <root>/clear/1.png              train
    OTS (reside_ots)                  <root>/hazy/0001_0.8_0.2.jpg        <root>/clear/0001.jpg           train

Packed output (fixed layout): ``<out>/<split>/{lq,gt}.lmdb`` for the splits a preset has (``train``
and/or ``val``). Rain100L/H arrive in varying layouts: move the rainy and clean images into the folders
above. RESIDE's OTS ships its hazy images in several part folders: put them into one ``hazy`` folder.
"""

import os

from gmmoe_arch.data.image_io import MissingDataError

from .output import output_locks
from .pack import plan_pack, write_pairs_locked

#: Rain100L/H names: rain-NNN.png (input) <-> norain-NNN.png (target)
RAIN_RULE = {'lq': 'rain-(.*)', 'gt': r'norain-\1'}
#: RESIDE names: the clear image's number, then ``_``-separated haze parameters
RESIDE_RULE = {'lq': r'(\d+)_.*', 'gt': r'\1'}

#: preset -> split -> (lq folder, gt folder, pair rule), folders relative to the root
PRESETS = {
    'lol_v1': {
        'train': ('our485/low', 'our485/high', 'identical'),
        'val': ('eval15/low', 'eval15/high', 'identical'),
    },
    'lol_v2_real': {
        'train': ('Real_captured/Train/Low', 'Real_captured/Train/Normal', 'lol_v2_real'),
        'val': ('Real_captured/Test/Low', 'Real_captured/Test/Normal', 'lol_v2_real'),
    },
    'lol_v2_synthetic': {
        'train': ('Synthetic/Train/Low', 'Synthetic/Train/Normal', 'identical'),
        'val': ('Synthetic/Test/Low', 'Synthetic/Test/Normal', 'identical'),
    },
    'lsrw_huawei': {
        'train': ('Training data/Huawei/low', 'Training data/Huawei/high', 'identical'),
        'val': ('Eval/Huawei/low', 'Eval/Huawei/high', 'identical'),
    },
    'lsrw_nikon': {
        'train': ('Training data/Nikon/low', 'Training data/Nikon/high', 'identical'),
        'val': ('Eval/Nikon/low', 'Eval/Nikon/high', 'identical'),
    },
    'rain100l': {
        'train': ('train/rain', 'train/norain', RAIN_RULE),
        'val': ('test/rain', 'test/norain', RAIN_RULE),
    },
    'rain100h': {
        'train': ('train/rain', 'train/norain', RAIN_RULE),
        'val': ('test/rain', 'test/norain', RAIN_RULE),
    },
    'reside_sots_indoor': {'val': ('indoor/hazy', 'indoor/gt', RESIDE_RULE)},
    'reside_sots_outdoor': {'val': ('outdoor/hazy', 'outdoor/gt', RESIDE_RULE)},
    'reside_its': {'train': ('hazy', 'clear', RESIDE_RULE)},
    'reside_ots': {'train': ('hazy', 'clear', RESIDE_RULE)},
}


def preset_tree(preset, root='<root>'):
    """The folders a preset expects, one ``split: lq_dir | gt_dir (pair rule)`` line per split."""
    return '\n'.join(
        f'  {split}: {os.path.join(root, lq)} | {os.path.join(root, gt)} (pair_rule {_rule_text(rule)})'
        for split, (lq, gt, rule) in _splits(preset).items()
    )


def _rule_text(rule):
    """A pair rule as ``--pair-rule`` takes it: a name, or ``REGEX->TEMPLATE``."""
    return f'{rule["lq"]}->{rule["gt"]}' if isinstance(rule, dict) else rule


def _splits(preset):
    if preset not in PRESETS:
        raise ValueError(f'--preset: unknown preset {preset!r}; known: {", ".join(PRESETS)}')
    return PRESETS[preset]


def pack_preset(preset, root, out_dir, **kwargs):
    """Pack every split of ``preset`` found under ``root`` into ``out_dir/<split>/{lq,gt}.lmdb``.

    All folders, pairs, image headers and targets are checked before anything is written, and every
    split folder is locked for the whole run (see :mod:`datasets_lmdb.output`). ``kwargs`` go to
    :func:`~datasets_lmdb.pack.pack_pairs` (``form``, ``workers``, ``progress``, ``overwrite``,
    ``skip_unpaired``). Returns ``{split: number of pairs}``.
    """
    splits = _splits(preset)
    missing = [
        os.path.join(root, d)
        for lq, gt, _ in splits.values()
        for d in (lq, gt)
        if not os.path.isdir(os.path.join(root, d))
    ]
    if missing:
        raise MissingDataError(
            f'--root {root} does not hold the {preset} tree; missing: '
            f'{", ".join(missing)}. Expected:\n{preset_tree(preset, root)}'
        )
    overwrite, skip_unpaired = kwargs.pop('overwrite', False), kwargs.pop('skip_unpaired', False)
    outs = {split: os.path.join(out_dir, split) for split in splits}
    plans = {
        split: plan_pack(os.path.join(root, lq), os.path.join(root, gt), outs[split], rule, overwrite, skip_unpaired)
        for split, (lq, gt, rule) in splits.items()
    }
    with output_locks(outs.values()):
        return {
            split: write_pairs_locked(*plan, outs[split], overwrite=overwrite, **kwargs)
            for split, plan in plans.items()
        }
