"""Inference on users' images, one module per job; :mod:`gmmoe_arch.enhance` is its public face.

- :mod:`.errors`: :class:`~.errors.EnhanceError`, the one error a user's mistake becomes.
- :mod:`.loading`: checkpoints (``weights_only=True``) and option files in, a network on a device out.
- :mod:`.tiling`: tiling options (checked once), tile plans, blending shares, the row-band blender.
- :mod:`.statistics`: whole-image pooled statistics shared between tiles through the pooling seam.
- :mod:`.runner`: precision and statistics passes around the network, pixels to tensors and back.
- :mod:`.image_files`: reading (header size check, EXIF orientation) and atomic writing of image files.
- :mod:`.jobs`: inputs to jobs (loop-safe walking, output names, same-file refusal), writable checks,
  the per-image loop and its summary.

Imports run one way: ``jobs -> runner, image_files, tiling``; ``runner -> statistics, tiling``; every
module but ``statistics`` -> ``errors``; of the network, ``loading`` imports ``archs.checkpoint_config`` and
``runner`` imports ``archs.gmmoe_arch`` (``record_gates``) and ``archs.pooling`` (``pooling_hook``).
"""
