"""Command-line pieces the benchmark scripts share."""

import argparse


def parse_size(text):
    """``'600x400'`` (width x height) -> ``(400, 600)`` (height, width); an ``argparse`` type."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 600x400 (width x height), got "{text}"') from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f'size must be positive, got "{text}"')
    return h, w


def comma_list(text):
    """``'a, b,,c'`` -> ``['a', 'b', 'c']``."""
    return [s.strip() for s in text.split(',') if s.strip()]
