"""Pairing low-quality (lq) and ground-truth (gt) images by name (no registration here).

Images are paired by *stem* (file name without extension, or an LMDB key). A pair rule maps an lq
stem to its gt stem:

* ``'identical'``: same stem (``a.png`` <-> ``a.jpg`` too).
* ``'lol_v2_real'``: LOL-v2 Real's ``low00001`` <-> ``normal00001``.
* ``{'lq': REGEX, 'gt': TEMPLATE}`` (also as a JSON/YAML string ``'{"lq": ..., "gt": ...}'``, or the
  string ``'REGEX->TEMPLATE'``): the lq stem must match REGEX in full; the gt stem is ``TEMPLATE`` with
  ``\\1``/``\\g<name>`` filled in, e.g. ``{'lq': 'rain-(.*)', 'gt': r'norain-\\1'}`` for deraining folders.

Degradation labels (``'lowlight'``, ``'rain'``, ``'haze'``, ...) ride along as a trailing
``label=NAME`` field of a ``meta_info_file`` line (``LQ_NAME [GT_NAME] label=NAME``) or of an LMDB's
``meta_info.txt`` line (``KEY.EXT (h,w,c) TAG label=NAME``). BasicSR's own readers take the first
field (or the part before the first dot) of each line, so they read such files as before. A per-pixel
label map (:mod:`.label_maps`) is named by a ``labelmap=REF`` field after the label, ``REF`` relative to the
folder of the file that names it: a PNG file, or an LMDB folder holding it under the pair's key.

Problems with the data (missing folders, unpaired or unreadable files) raise
:class:`~gmmoe_arch.data.image_io.DataError` (``MissingDataError``, also a ``FileNotFoundError``, for
missing folders), a bad ``pair_rule`` a ``ValueError``; each names the option and the first few culprits.
"""

import os
import re

import yaml

from .image_io import IMAGE_EXTENSIONS, DataError, MissingDataError, read_size

SHOWN = 5
#: where a user who lacks a data folder is sent
WHERE_TO_LOOK = '`datasets_lmdb presets` prints the folder trees each dataset needs; see docs/data.md'
LABEL_PREFIX = 'label='
LABELMAP_PREFIX = 'labelmap='
_LABEL = re.compile(r'[A-Za-z0-9_-]+')
_META_LINE = re.compile(
    r'^(\S+)\s+\((\d+),\s*(\d+),\s*(\d+)\)(?:\s+(?!label=|labelmap=)(\S+))?(?:\s+label=(\S*))?'
    r'(?:\s+labelmap=(\S+))?\s*$'
)


def culprits(items):
    """``'a, b, c (and 7 more)'`` for error messages: the first ``SHOWN`` items of a sequence."""
    items = list(items)
    text = ', '.join(str(i) for i in items[:SHOWN])
    return text + (f' (and {len(items) - SHOWN} more)' if len(items) > SHOWN else '')


def stem(name):
    """File name without its directory and last extension."""
    return os.path.splitext(os.path.basename(name))[0]


def list_images(folder, option):
    """Map stem -> file name for the images directly inside ``folder`` (option named in errors)."""
    if not os.path.isdir(folder):
        raise MissingDataError(
            f'{option}: folder not found: {folder}; put the images there or change {option} ({WHERE_TO_LOOK})'
        )
    images, others = {}, []
    for name in sorted(os.listdir(folder)):
        if name.startswith('.') or not os.path.isfile(os.path.join(folder, name)):
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            others.append(name)
            continue
        if stem(name) in images:
            raise DataError(
                f'{option}: two images share the name {stem(name)!r} in {folder}: {images[stem(name)]}, {name}'
            )
        images[stem(name)] = name
    if not images:
        extra = f'; it holds only {culprits(others)}' if others else ''
        raise DataError(f'{option}: no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder}{extra} ({WHERE_TO_LOOK})')
    return images


def make_rule(pair_rule):
    """Return ``f(lq_stem) -> gt_stem or None`` for a ``pair_rule`` option value (see module doc)."""
    if pair_rule in (None, 'identical'):
        return lambda s: s
    if pair_rule == 'lol_v2_real':
        pair_rule = {'lq': 'low(.*)', 'gt': r'normal\1'}
    if isinstance(pair_rule, str) and pair_rule.lstrip().startswith('{'):
        pair_rule = _parse_mapping(pair_rule)
    if isinstance(pair_rule, str) and '->' in pair_rule:
        lq, gt = pair_rule.split('->', 1)
        pair_rule = {'lq': lq, 'gt': gt}
    if not (isinstance(pair_rule, dict) and set(pair_rule) == {'lq', 'gt'}):
        raise ValueError(
            f"pair_rule: expected 'identical', 'lol_v2_real', {{lq: REGEX, gt: TEMPLATE}} "
            f"(a mapping or its JSON/YAML text) or 'REGEX->TEMPLATE', got {pair_rule!r}"
        )
    try:
        pattern = re.compile(pair_rule['lq'])
    except re.error as err:
        raise ValueError(f'pair_rule.lq: bad regular expression {pair_rule["lq"]!r}: {err}') from None
    template = pair_rule['gt']

    def rule(lq_stem):
        match = pattern.fullmatch(lq_stem)
        if match is None:
            return None
        try:
            return match.expand(template)
        except (re.error, IndexError) as err:
            raise ValueError(f'pair_rule.gt: bad template {template!r}: {err}') from None

    return rule


def _parse_mapping(text):
    """``'{"lq": ..., "gt": ...}'`` (JSON, or YAML's ``{lq: ..., gt: ...}``) -> dict."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, 'problem', None) or err
        raise ValueError(f'pair_rule: {text!r} is not a JSON/YAML mapping ({problem})') from None


def check_label(label, where):
    """``label`` when it is a usable label (letters, digits, ``_``, ``-``), else ``DataError`` naming ``where``."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise DataError(f'{where}: bad label {label!r} (letters, digits, _ and - only, e.g. rain)')
    return label


def check_labels(labels, keys, where):
    """Every key of ``keys`` has a valid label in the mapping ``labels``; ``DataError`` naming ``where`` otherwise."""
    missing = [key for key in keys if key not in labels]
    if missing:
        raise DataError(f'{where}: {len(missing)} pair(s) without a label: {culprits(missing)}')
    for key in keys:
        check_label(labels[key], f'{where}[{key}]')


def read_pair_list(path):
    """Read a ``meta_info_file``: lines ``LQ_NAME [GT_NAME] [label=NAME] [labelmap=REF]``.

    Returns ``[(lq_stem, gt_stem|None, label|None, label map path|None)]``, the label map's ``REF`` joined to
    the file's folder. Names may carry extensions; a second field starting with ``(`` (BasicSR's shape
    column) is not a gt name, so BasicSR meta_info files (and the ``NAME.png (h,w,c) label=NAME`` lines
    ``datasets_lmdb synth`` writes) can be used as they are.
    """
    if not os.path.isfile(path):
        raise MissingDataError(f'meta_info_file: file not found: {path}')
    pairs = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            tagged = {prefix: [] for prefix in (LABEL_PREFIX, LABELMAP_PREFIX)}
            others = []
            for field in fields[1:]:
                prefix = next((p for p in tagged if field.startswith(p)), None)
                (others if prefix is None else tagged[prefix]).append(field[len(prefix or '') :])
            for prefix, values in tagged.items():
                if len(values) > 1:
                    raise DataError(f'meta_info_file: {path} line {number} has {len(values)} {prefix} fields')
            labels, label_maps = tagged[LABEL_PREFIX], tagged[LABELMAP_PREFIX]
            label = check_label(labels[0], f'meta_info_file: {path} line {number}') if labels else None
            label_map = os.path.join(os.path.dirname(path), label_maps[0]) if label_maps else None
            gt = others[0] if others and not others[0].startswith('(') else None
            pairs.append((stem(fields[0]), stem(gt) if gt else None, label, label_map))
    if not pairs:
        raise DataError(f'meta_info_file: no entries in {path}')
    return pairs


def pair_stems(
    lq_stems, gt_stems, pair_rule='identical', pair_list=None, skip_unpaired=False, where=('dataroot_lq', 'dataroot_gt')
):
    """Pair lq stems with gt stems; returns ``[(lq_stem, gt_stem)]`` sorted by lq stem.

    Without ``pair_list`` every lq and every gt stem must find its partner (unless
    ``skip_unpaired``); with it (from :func:`read_pair_list`) only the listed pairs are used and each
    must exist. ``where`` names the lq and gt sources in error messages.
    """
    rule = make_rule(pair_rule)
    lq_stems, gt_stems = set(lq_stems), set(gt_stems)
    if pair_list is not None:
        pairs = [(lq, gt if gt is not None else rule(lq)) for lq, gt, *_ in pair_list]
        missing = [f'{lq} -> {gt}' for lq, gt in pairs if lq not in lq_stems or gt not in gt_stems]
        if missing:
            raise DataError(
                f'meta_info_file: {len(missing)} listed pair(s) not found in {where[0]} '
                f'/ {where[1]}: {culprits(missing)}'
            )
        return sorted(pairs)
    pairs, lonely_lq = [], []
    for lq in sorted(lq_stems):
        gt = rule(lq)
        if gt in gt_stems:
            pairs.append((lq, gt))
        else:
            lonely_lq.append(lq)
    lonely_gt = sorted(gt_stems - {gt for _, gt in pairs})
    if (lonely_lq or lonely_gt) and not (skip_unpaired and pairs):
        parts = [
            f'{len(v)} in {w} without a partner: {culprits(v)}'
            for v, w in ((lonely_lq, where[0]), (lonely_gt, where[1]))
            if v
        ]
        raise DataError(
            f'unpaired images (pair_rule={pair_rule!r}): {"; ".join(parts)}. Fix the '
            'folders, choose pairs with meta_info_file, or set skip_unpaired'
        )
    return pairs


def check_sizes(pairs):
    """Header check of ``[(lq_path, gt_path)]``: every file readable, lq and gt of equal size.

    Returns ``[(h, w)]`` per pair. Only image headers are read, so this stays fast on large sets.
    """
    sizes, unreadable, mismatched = [], [], []
    for lq_path, gt_path in pairs:
        pair = []
        for path in (lq_path, gt_path):
            try:
                pair.append(read_size(path))
            except DataError as err:
                unreadable.append(str(err))
        if len(pair) < 2:
            continue
        if pair[0] != pair[1]:
            mismatched.append(f'{lq_path} {pair[0][0]}x{pair[0][1]} vs {gt_path} {pair[1][0]}x{pair[1][1]}')
        sizes.append(pair[0])
    if unreadable:
        raise DataError(f'{len(unreadable)} unreadable image(s): {culprits(unreadable)}')
    if mismatched:
        raise DataError(f'{len(mismatched)} pair(s) with different lq/gt sizes (h x w): {culprits(mismatched)}')
    return sizes


def read_lmdb_meta(lmdb_dir, option):
    """Parse ``<lmdb_dir>/meta_info.txt`` (BasicSR's ``NAME.EXT (h,w,c) TAG`` lines, optionally ``label=NAME``).

    Returns ``{key: (h, w, c)}``; the key is NAME without its extension. Raises naming ``option``
    when the folder, its ``data.mdb`` or its ``meta_info.txt`` is missing or a line is malformed.
    """
    return {key: shape for key, shape, *_ in _lmdb_meta_lines(lmdb_dir, option)}


def read_lmdb_labels(lmdb_dir, option):
    """``{key: label}`` of the ``meta_info.txt`` lines of ``<lmdb_dir>`` that carry ``label=NAME``."""
    return {key: label for key, _, label, _ in _lmdb_meta_lines(lmdb_dir, option) if label is not None}


def read_lmdb_label_maps(lmdb_dir, option):
    """``{key: label map LMDB folder}`` of the ``meta_info.txt`` lines of ``<lmdb_dir>`` that carry
    ``labelmap=REF`` (``REF`` joined to ``lmdb_dir``; the map is stored there under the same key)."""
    return {
        key: os.path.normpath(os.path.join(lmdb_dir, ref))
        for key, _, _, ref in _lmdb_meta_lines(lmdb_dir, option)
        if ref is not None
    }


def _lmdb_meta_lines(lmdb_dir, option):
    """``[(key, (h, w, c), label|None, labelmap REF|None)]`` of ``<lmdb_dir>/meta_info.txt``; see
    :func:`read_lmdb_meta`."""
    if not os.path.isdir(lmdb_dir):
        raise MissingDataError(
            f'{option}: LMDB folder not found: {lmdb_dir}; pack the dataset with '
            f'`datasets_lmdb pack` or change {option} ({WHERE_TO_LOOK})'
        )
    for needed in ('data.mdb', 'meta_info.txt'):
        if not os.path.isfile(os.path.join(lmdb_dir, needed)):
            raise MissingDataError(
                f'{option}: {lmdb_dir} is not a complete LMDB (no {needed}); '
                'pack it again with `datasets_lmdb pack --overwrite` (see docs/data.md)'
            )
    meta = []
    path = os.path.join(lmdb_dir, 'meta_info.txt')
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = _META_LINE.match(line.strip())
            if match is None:
                raise DataError(
                    f'{option}: {lmdb_dir}/meta_info.txt line {number} is not '
                    f'"NAME.EXT (h,w,c) TAG [label=NAME] [labelmap=REF]": {line.strip()!r}'
                )
            name, label = match.group(1), match.group(6)
            if label is not None:
                check_label(label, f'{option}: {path} line {number}')
            shape = tuple(int(match.group(i)) for i in (2, 3, 4))
            meta.append((name.rsplit('.', 1)[0], shape, label, match.group(7)))
    if not meta:
        raise DataError(f'{option}: {lmdb_dir}/meta_info.txt lists no images')
    return meta
