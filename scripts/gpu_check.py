"""GPU check (not a test): GM-MoE's speed on one CUDA GPU today, and what each candidate GPU path buys.

One run on one GPU measures, part by part (:mod:`gmmoe_arch.bench.gpu`, one module per part), printing each
number as it comes and rewriting ``<out>/gpu_check.json`` after every measurement (a later failure, time-out or
kill loses nothing before it):

* ``reference``: the reference vectors (``tests/reference``) on the device, float64 and float32 max |diff|.
* ``inference``: images/s at 600x400 and 1024x1024, batch 1 and 8: the straightforward path (``plain``, what
  ``fast='auto'`` runs on GPUs), the fast path, bf16 autocast, channels-last; each against plain fp32.
* ``training``: it/s of ``GMMoEModel``'s training step (AdamW, the released PSNR loss) at batch 8 x 256^2:
  plain, fused AdamW, fast, bf16 AMP, ``checkpoint: block``, channels-last; peak memory.
* ``released``: the 690M preset's training it/s and peak memory at batch 1 x 256^2, with and without
  checkpointing.
* ``training_compiled`` / ``inference_compiled``: ``torch.compile`` of the network, modes ``reduce-overhead``
  (CUDA graphs) and ``max-autotune-no-cudagraphs``, fp32 and bf16; compile + warm-up seconds apart.
* ``loader``: the fastest training step fed by BasicSR's loader from PNG folders and from a raw LMDB with 4, 8
  and 16 workers: it/s, GPU busy share, NVML utilisation, time waiting for batches, the loader's own batches/s.
* ``profile``: ``torch.profiler`` of plain batch-1 inference and one training step; ``basicsr``: ``basicsr
  train`` under torchrun (NCCL), then ``--auto_resume``.
* ``summary``: speed-ups over plain against the issue's targets.

Every part gets a share of ``--budget-s``; a measurement that would not fit is recorded as skipped, one that
overruns is cut off and recorded as such, and any failure is recorded and the run goes on. From the repository
root (``gmmoe_arch`` importable, e.g. ``PYTHONPATH=.``)::

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check_out
    PYTHONPATH=. python scripts/gpu_check.py --cpu-dry-run --out /tmp/gpu_dry    # every code path, tiny, on CPU
    PYTHONPATH=. python scripts/gpu_check.py --parts basicsr

``--cpu-dry-run`` runs the same code on the CPU, small (:func:`gmmoe_arch.bench.gpu.plan.dry_plan`), compiled
with dynamo's ``eager`` backend; its times mean nothing.
"""

from gmmoe_arch.bench.gpu.cli import main

if __name__ == '__main__':
    main()
