"""gmmoe_arch.runtime: the allocator switch of the console commands, and its undo for benchmarks."""

import sys

import pytest

from gmmoe_arch import runtime

glibc = pytest.mark.skipif(runtime._mallopt() is None, reason='needs glibc (mallopt)')


def test_off_switch_is_honoured(monkeypatch):
    for value in ('off', '0', 'false', 'no', 'OFF'):
        monkeypatch.setenv('GMMOE_MALLOC', value)
        assert runtime.configure_allocator() is False
    assert runtime.configure_allocator(False) is False


@glibc
def test_tuning_and_restoring_apply_on_glibc(monkeypatch):
    monkeypatch.delenv('GMMOE_MALLOC', raising=False)
    try:
        assert runtime.configure_allocator() is True
    finally:
        assert runtime.restore_allocator() is True


def test_not_applied_off_linux(monkeypatch):
    monkeypatch.setattr(sys, 'platform', 'darwin')
    assert runtime.configure_allocator(True) is False
    assert runtime.restore_allocator() is False
