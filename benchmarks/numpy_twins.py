"""Plain-numpy twins of the kit's numba kernels, shared by the tests (which hold the kernels against
them) and the benchmarks (which time the kernels against them). Importing this has no side effects."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def numpy_masks_to_flows(labels: np.ndarray, diffusion: float = 1.0) -> np.ndarray:
    """The algorithm of ``kit.flows.masks_to_flows``, one cell at a time in vectorised numpy
    (Jacobi steps by fancy indexing); ``diffusion`` scales the number of Jacobi steps."""
    result = np.zeros((2, *labels.shape), np.float32)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ys, xs = np.nonzero(labels[box] == k)
        ly, lx = ys + 1, xs + 1
        heat = np.zeros((labels[box].shape[0] + 2, labels[box].shape[1] + 2))
        i = np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2)
        for _ in range(int(diffusion * 2 * (np.ptp(ys) + np.ptp(xs)))):
            heat[ly[i], lx[i]] += 1
            heat[ly, lx] = sum(heat[ly + dy, lx + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
        heat[ly, lx] = np.log1p(heat[ly, lx])
        gy = heat[ly + 1, lx] - heat[ly - 1, lx]
        gx = heat[ly, lx + 1] - heat[ly, lx - 1]
        norm = np.sqrt(gy ** 2 + gx ** 2) + 1e-20
        result[0, ys + box[0].start, xs + box[1].start] = gy / norm
        result[1, ys + box[0].start, xs + box[1].start] = gx / norm
    return result


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of a closed polygon float[n, 2] (COCO's ``area`` of a one-part polygon)."""
    x, y = np.asarray(points, np.float64).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0
