"""A labelled comparison grid: one row per image, one column per method (input, baselines, network, truth)."""

import cv2
import numpy as np


def save_grid(rows, labels, path, height=220, gap=4):
    """Write ``rows`` (lists of ``(H, W, 3)`` uint8 images, BGR as OpenCV writes them, one per ``labels``
    entry) as a labelled PNG at ``path``.

    Every row is as wide as the widest one at ``height``: rows of square photos are made taller instead
    of being padded, which would leave a blank block beside them.
    """
    aspects = [sum(img.shape[1] / img.shape[0] for img in row) for row in rows]
    width = round(height * max(aspects)) + gap * (len(labels) - 1)
    out_rows = []
    for row, aspect in zip(rows, aspects):
        row_height = (width - gap * (len(labels) - 1)) / aspect
        edges = np.round(np.cumsum([0] + [row_height * img.shape[1] / img.shape[0] for img in row])).astype(int)
        tiles = []
        for img, label, left, right in zip(row, labels, edges[:-1], edges[1:]):
            tile = cv2.resize(img, (int(right - left), round(row_height)), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
            tiles += [tile, np.full((tile.shape[0], gap, 3), 255, np.uint8)]
        out_rows += [np.concatenate(tiles[:-1], axis=1), np.full((gap, width, 3), 255, np.uint8)]
    cv2.imwrite(path, np.concatenate(out_rows[:-1], axis=0))
