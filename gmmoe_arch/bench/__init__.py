"""The project's benchmark toolkit (measurements, not tests): timing, records, bench networks and models.

* :mod:`.timing`: CPU and CUDA timers, interleaved runs, medians, paired ratios, a run sized to a time target.
* :mod:`.record`: the machine a measurement ran on, JSON results with date/machine/torch version, peak RSS.
* :mod:`.nets`: seeded networks with every branch active, random batches, output agreement, and a real
  :class:`~gmmoe_arch.models.gmmoe_model.GMMoEModel` built from a dict of options for training steps.
* :mod:`.pairs`: synthetic photo-like image pairs for loader benchmarks.
* :mod:`.fast`: the fast path against the straightforward path (``scripts/bench_fast.py``).
* :mod:`.gpu`: the prepared GPU measurement (``scripts/gpu_check.py``), one module per part.
"""
