"""Shared test fixtures: paths to the repository and to the reference vectors."""
from pathlib import Path

import pytest

import gmmoe_arch  # noqa: F401  (first: applies the basicsr compat patches before any basicsr import)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def reference_dir():
    assert REFERENCE.is_dir(), f'reference vectors not found at {REFERENCE} (shared/ must sit beside the repo)'
    return REFERENCE
