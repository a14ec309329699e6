"""The prepared GPU measurement (``scripts/gpu_check.py``), one module per part: :mod:`.plan` (sizes, budgets),
:mod:`.run` (recording, the time budget, shared helpers), :mod:`.inference`, :mod:`.training` (also the released
preset), :mod:`.loader`, :mod:`.profile`, :mod:`.reference` (also the ``basicsr`` part), :mod:`.summary` and
:mod:`.cli` (the command line)."""
