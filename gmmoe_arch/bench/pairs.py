"""Synthetic photo-like image pairs for data-loader benchmarks."""

import os

import cv2
import numpy as np


def write_pairs(root, n, size=(400, 600), seed=0):
    """``n`` pairs as PNG folders ``root/{lq,gt}``: smooth colour fields with texture (gt) and a dark noisy
    version (lq), ``size`` = (height, width)."""
    rng = np.random.default_rng(seed)
    for side in ('lq', 'gt'):
        os.makedirs(os.path.join(root, side), exist_ok=True)
    for i in range(n):
        coarse = rng.random((size[0] // 16, size[1] // 16, 3)).astype(np.float32)
        gt = cv2.resize(coarse, size[::-1], interpolation=cv2.INTER_CUBIC) * 200
        gt = np.clip(gt + rng.normal(0, 6, gt.shape), 0, 255)
        lq = np.clip(gt * 0.15 + rng.normal(0, 2, gt.shape), 0, 255)
        cv2.imwrite(os.path.join(root, 'gt', f'{i:04d}.png'), gt.astype(np.uint8))
        cv2.imwrite(os.path.join(root, 'lq', f'{i:04d}.png'), lq.astype(np.uint8))
