"""Images and references shared by the inference tests."""

import numpy as np
import torch

CPU = torch.device('cpu')


def smooth_image(h, w, seed=1):
    """``(1, 3, h, w)`` dim, smooth image with a little noise (a low-light-like input)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode='bicubic').clamp(0, 1) * 0.3
    return x + 0.02 * torch.rand(1, 3, h, w, generator=g)


def random_image(shape, dtype, seed=0):
    """A dim random image of ``shape`` and ``dtype`` (float32 in [0, 0.4], integers up to 0.4 x their maximum)."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape).astype(np.float32) * 0.4
    return (rng.random(shape) * 0.4 * np.iinfo(dtype).max).astype(dtype)


def direct_output(net, img):
    """What ``net`` called directly on the whole RGB ``uint8`` image gives, as ``uint8`` (clipped, rounded)."""
    x = torch.from_numpy(np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1)) / 255)[None]
    with torch.inference_mode():
        y = net(x)[0].numpy().transpose(1, 2, 0)
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)
