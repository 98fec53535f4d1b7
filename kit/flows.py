"""Cellpose-style flows: targets from instances, and instances back from (predicted) flows.

A cell's flow field is the normalised gradient of a heat distribution diffused from the cell's
centre pixel and confined to the cell, so every pixel of a cell points along the cell towards its
centre. Following the flows from every foreground pixel gathers a cell's pixels at its centre;
pixels whose end points meet form one instance. This is the idea of Cellpose (Stringer et al.,
2021) written for this kit: numba kernels on each cell's bounding box, no GPU, no downloaded
weights.

Conventions: flows are float32[2, H, W] holding (dy, dx); labels are int[H, W] with 0 as background.
"""
from __future__ import annotations

import numba
import numpy as np

FLOW_THRESHOLD = 0.4  # Cellpose's default bound on an instance's flow error
# The flow-error check diffuses for this fraction of masks_to_flows' steps: the shorter diffusion
# changes a true cell's flows far less than the error threshold (0.4) tells apart, at half the cost.
ERROR_DIFFUSION = 0.5
N_STEPS = 200  # Euler steps: enough for a unit-speed point to cross the largest cells here
MIN_SIZE = 15  # pixels; smaller groups are debris of the end-point clustering
MIN_SEED_COUNT = 10  # a histogram peak needs more end points than this to seed an instance
STALL_CHECK_EVERY = 10  # steps between the checks of whether a followed point still moves
STALL_DISTANCE = 0.25  # pixels: a point that moved less between two checks has arrived
_LANES = 16  # points followed side by side in the flow-following kernel
_SEED_WINDOW = 2  # half width of the window in which a seed must be the histogram maximum
_GROW_RADIUS = 5  # an instance's end-point cluster grows at most this far from its seed
_GROW_MIN_COUNT = 3  # ... through pixels that received at least this many end points


def masks_to_flows(labels: np.ndarray) -> np.ndarray:
    """float32[2, H, W] (dy, dx) unit flows towards each cell's centre; 0 on the background.

    ``labels``: int[H, W], 0 = background, k > 0 = cell k (labels need not be consecutive).
    Per cell: the centre is the cell pixel nearest the median of its pixel coordinates; heat is
    injected there and averaged over 3x3 neighbourhoods (Jacobi steps, pixels outside the cell
    held at 0) for 2 x (height + width - 2) iterations of the cell's bounding box, as Cellpose
    does; the flow is the normalised central-difference gradient of log(1 + heat). A one-pixel
    cell, or a fragment cut off from its centre, has zero flow.
    """
    labels = _checked_labels(labels)
    if labels.size == 0 or labels.max() == 0:
        return np.zeros((2, *labels.shape), np.float32)
    return _masks_to_flows(labels, int(labels.max()))


def flows_to_labels(flows: np.ndarray, cell_mask: np.ndarray, n_steps: int = N_STEPS,
                    flow_threshold: float | None = FLOW_THRESHOLD,
                    min_size: int = MIN_SIZE) -> np.ndarray:
    """int32[H, W] instances (consecutive labels 1..n, never overlapping) recovered from flows.

    ``flows``: float[2, H, W] (dy, dx), unit scale as ``masks_to_flows`` makes them.
    ``cell_mask``: bool[H, W], the pixels that belong to some cell (e.g. cell probability > 0.5).
    Every mask pixel takes up to ``n_steps`` Euler steps along the bilinearly interpolated flows
    (flows outside the mask count as zero; ``follow_flows`` says when a point stops early). End
    points are histogrammed; histogram peaks (maximum of their 5x5 window, more than
    ``MIN_SEED_COUNT`` end points) seed instances, largest first, each growing over nearby
    well-visited histogram pixels; a pixel takes the label of the cluster its end point fell in,
    or stays background. Instances whose own flows (``masks_to_flows`` diffused for
    ``ERROR_DIFFUSION`` of its steps, ``_flow_errors``) differ from ``flows`` by a mean squared
    error above ``flow_threshold`` are dropped (``None`` skips the check), then those smaller than
    ``min_size`` pixels.
    """
    flows, cell_mask = _checked_flows(flows, cell_mask)
    if n_steps < 0 or min_size < 0:
        raise ValueError(f"n_steps and min_size must be >= 0, got {n_steps} and {min_size}")
    if flow_threshold is not None and not flow_threshold >= 0:
        raise ValueError(f"flow_threshold must be >= 0 or None, got {flow_threshold}")
    ys, xs = np.nonzero(cell_mask)
    if ys.size == 0:
        return np.zeros(cell_mask.shape, np.int32)
    ends = _follow_pixels(_interleave(flows, cell_mask), ys, xs, n_steps, STALL_CHECK_EVERY)
    labels = _cluster_end_points(ends, ys, xs, cell_mask.shape)
    n = int(labels.max())
    keep = np.ones(n + 1, bool)
    if flow_threshold is not None and n > 0:
        keep[1:] = _flow_errors(labels, n, flows, ERROR_DIFFUSION) <= flow_threshold
    return drop_small(labels, min_size, keep)


def follow_flows(flows: np.ndarray, ys: np.ndarray, xs: np.ndarray, n_steps: int = N_STEPS,
                 stop_when_stalled: bool = True) -> np.ndarray:
    """float32[n, 2] end points (y, x) of up to ``n_steps`` Euler steps from pixels (ys[i], xs[i]).

    Each step adds the flow bilinearly interpolated at the current point; points stay inside the
    image (clipped to [0, H-1] x [0, W-1]). With ``stop_when_stalled`` a point stops early once it
    moved less than ``STALL_DISTANCE`` pixels over ``STALL_CHECK_EVERY`` steps (slower than
    0.025 px a step): it circles its cell's centre by then, and the further steps would not move it
    out of the cluster that its end point joins, so they would cost time without changing an
    instance. Checking often (every 10 steps) lets a point stop soon after it arrives.
    """
    flows, _ = _checked_flows(flows, None)
    ys, xs = np.asarray(ys), np.asarray(xs)
    if ys.shape != xs.shape or ys.ndim != 1:
        raise ValueError(f"ys and xs must be 1-D of one length, got shapes {ys.shape} and {xs.shape}")
    h, w = flows.shape[1:]
    if ys.size and (ys.min() < 0 or ys.max() > h - 1 or xs.min() < 0 or xs.max() > w - 1):
        raise ValueError(f"start points must lie inside the {h}x{w} image")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    flows_yx = np.ascontiguousarray(flows.transpose(1, 2, 0))
    return _follow_pixels(flows_yx, ys, xs, n_steps, STALL_CHECK_EVERY if stop_when_stalled else 0)


def drop_small(labels: np.ndarray, min_size: int, keep: np.ndarray | None = None) -> np.ndarray:
    """int32[H, W]: instances with fewer than ``min_size`` pixels removed, the rest numbered 1..n in order.

    ``keep``: optional bool[labels.max() + 1]; labels k with ``keep[k]`` False are removed too."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    if keep is not None and np.shape(keep) != sizes.shape:
        raise ValueError(f"keep must be bool[labels.max() + 1] = [{sizes.size}], got shape {np.shape(keep)}")
    keep = (sizes >= max(min_size, 1)) & (True if keep is None else np.asarray(keep, bool))
    keep[0] = False
    new_ids = np.zeros(sizes.size, np.int32)
    new_ids[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return new_ids[labels]


def _follow_pixels(flows_yx: np.ndarray, ys: np.ndarray, xs: np.ndarray, n_steps: int,
                   check_every: int) -> np.ndarray:
    """``follow_flows`` on checked input: ``flows_yx`` float32[H, W, 2] C-contiguous, so that both
    components of a pixel sit side by side."""
    y, x = ys.astype(np.float32), xs.astype(np.float32)
    if n_steps == 0 or ys.size == 0:
        return np.stack([y, x], axis=1)
    return _follow(flows_yx, y, x, int(n_steps), check_every, STALL_DISTANCE)


def _checked_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer image [H, W], got dtype {labels.dtype} shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise ValueError("labels must lie in 0..2**31-1 (0 = background)")
    return np.ascontiguousarray(labels, dtype=np.int32)


def _checked_flows(flows: np.ndarray, cell_mask: np.ndarray | None):
    flows = np.asarray(flows)
    if flows.ndim != 3 or flows.shape[0] != 2 or not np.issubdtype(flows.dtype, np.floating):
        raise ValueError(f"flows must be float [2, H, W] (dy, dx), got dtype {flows.dtype} shape {flows.shape}")
    if not np.isfinite(flows).all():
        raise ValueError("flows hold NaN or infinite values")
    flows = np.ascontiguousarray(flows, dtype=np.float32)
    if cell_mask is None:
        return flows, None
    cell_mask = np.asarray(cell_mask)
    if cell_mask.dtype != bool or cell_mask.shape != flows.shape[1:]:
        raise ValueError(f"cell_mask must be bool {flows.shape[1:]}, got dtype {cell_mask.dtype} "
                         f"shape {cell_mask.shape}")
    return flows, cell_mask


@numba.njit(cache=True)
def _masks_to_flows(labels, n_labels):
    """All cells in one pass: group their pixels, then diffuse per bounding box."""
    offsets, py, px, box = _group_pixels(labels, n_labels)
    flows = np.zeros((2, *labels.shape), np.float32)
    for k in range(1, n_labels + 1):
        a, b = offsets[k], offsets[k + 1]
        if b > a:
            gy, gx = _cell_flows(py[a:b], px[a:b], box[k], 1.0)
            for i in range(b - a):
                flows[0, py[a + i], px[a + i]] = gy[i]
                flows[1, py[a + i], px[a + i]] = gx[i]
    return flows


@numba.njit(cache=True)
def _flow_errors(labels, n_labels, flows, diffusion):
    """Per label: mean |own flow - flows|^2 over its pixels, the own flows never stored as an image."""
    offsets, py, px, box = _group_pixels(labels, n_labels)
    errors = np.zeros(n_labels)
    for k in range(1, n_labels + 1):
        a, b = offsets[k], offsets[k + 1]
        if b > a:
            gy, gx = _cell_flows(py[a:b], px[a:b], box[k], diffusion)
            total = 0.0
            for i in range(b - a):
                ey = gy[i] - flows[0, py[a + i], px[a + i]]
                ex = gx[i] - flows[1, py[a + i], px[a + i]]
                total += np.float64(ey * ey + ex * ex)
            errors[k - 1] = total / (b - a)
    return errors


@numba.njit(cache=True)
def _group_pixels(labels, n_labels):
    """Counting sort of the pixels by label, with each label's bounding box."""
    h, w = labels.shape
    counts = np.zeros(n_labels + 2, np.int64)
    box = np.empty((n_labels + 1, 4), np.int64)  # y0, y1, x0, x1 (inclusive)
    box[:, 0] = h
    box[:, 1] = -1
    box[:, 2] = w
    box[:, 3] = -1
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k > 0:
                counts[k + 1] += 1
                box[k, 0] = min(box[k, 0], y)
                box[k, 1] = max(box[k, 1], y)
                box[k, 2] = min(box[k, 2], x)
                box[k, 3] = max(box[k, 3], x)
    offsets = np.cumsum(counts)  # pixels of label k: offsets[k]..offsets[k+1]
    cursor = offsets.copy()
    py = np.empty(offsets[-1], np.int64)
    px = np.empty(offsets[-1], np.int64)
    for y in range(h):  # row-major, so each cell's pixels come in scan order
        for x in range(w):
            k = labels[y, x]
            if k > 0:
                py[cursor[k]] = y
                px[cursor[k]] = x
                cursor[k] += 1
    return offsets, py, px, box


@numba.njit(cache=True)
def _cell_flows(py, px, box, diffusion):
    """float32 (dy, dx) unit flows of one cell's pixels: heat diffused from its centre inside its
    bounding box, padded by one zero pixel on each side and flattened, so that a pixel's 3x3
    neighbours sit at fixed offsets; ``diffusion`` scales the number of steps."""
    width = box[3] - box[2] + 3
    height = box[1] - box[0] + 3
    flat = (py - box[0] + 1) * width + (px - box[2] + 1)
    cy, cx = _centre(py, px)
    heat = _diffuse(flat, width, height, cy - box[0] + 1, cx - box[2] + 1,
                    int(diffusion * 2 * (height + width - 6)))  # 2 x (box height - 1 + box width - 1)
    gy = np.empty(flat.size, np.float32)
    gx = np.empty(flat.size, np.float32)
    for i in range(flat.size):
        heat[flat[i]] = np.log1p(heat[flat[i]])
    for i in range(flat.size):
        j = flat[i]
        dy = heat[j + width] - heat[j - width]
        dx = heat[j + 1] - heat[j - 1]
        norm = np.sqrt(dy * dy + dx * dx) + 1e-20
        gy[i] = dy / norm
        gx[i] = dx / norm
    return gy, gx


@numba.njit(cache=True)
def _diffuse(flat, width, height, cy, cx, n_iter):
    """float64[height * width] heat after ``n_iter`` Jacobi steps (inject 1 at (cy, cx), then average
    each cell pixel's 3x3 neighbourhood; pixels outside the cell stay 0).

    The cell's pixels (ascending ``flat``) are walked as runs along a row, so that the averaging
    loop is contiguous and vectorises. Step t can only reach pixels within t rows and columns
    of the centre; the rest are exactly 0 before and after it and are skipped."""
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1  # the padding column splits runs at row ends
    starts = np.concatenate((flat[:1], flat[breaks]))
    stops = np.concatenate((flat[breaks - 1], flat[-1:])) + 1
    rows = starts // width
    heat = np.zeros(height * width)
    spare = np.zeros(height * width)
    for t in range(1, n_iter + 1):
        heat[cy * width + cx] += 1.0
        _average_runs(heat, spare, starts, stops, rows, width, cy, cx, t)
        heat, spare = spare, heat
    return heat


@numba.njit(cache=True)
def _average_runs(heat, spare, starts, stops, rows, width, cy, cx, reach):
    """spare = 3x3 means of heat on the runs' pixels within ``reach`` rows and columns of (cy, cx).

    Slices instead of offset indices, so that the loop vectorises without gathers."""
    for r in range(starts.size):
        if abs(rows[r] - cy) > reach:
            continue
        a = max(starts[r], rows[r] * width + cx - reach)
        b = min(stops[r], rows[r] * width + cx + reach + 1)
        up = heat[a - width - 1:b - width + 1]
        mid = heat[a - 1:b + 1]
        down = heat[a + width - 1:b + width + 1]
        out = spare[a:b]
        for i in range(b - a):
            out[i] = (up[i] + up[i + 1] + up[i + 2] + mid[i] + mid[i + 1] + mid[i + 2]
                      + down[i] + down[i + 1] + down[i + 2]) / 9.0


@numba.njit(cache=True)
def _centre(ys, xs):
    """The cell pixel nearest the median of the cell's coordinates (first in scan order on ties)."""
    my = np.median(ys.astype(np.float64))
    mx = np.median(xs.astype(np.float64))
    best, best_d = 0, np.inf
    for i in range(ys.size):
        d = (ys[i] - my) ** 2 + (xs[i] - mx) ** 2
        if d < best_d:
            best, best_d = i, d
    return ys[best], xs[best]


@numba.njit(cache=True)
def _interleave(flows, mask):
    """float32[H, W, 2]: (dy, dx) of a pixel side by side, as a step reads them; 0 outside ``mask``."""
    h, w = mask.shape
    out = np.zeros((h, w, 2), np.float32)
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                out[y, x, 0] = flows[0, y, x]
                out[y, x, 1] = flows[1, y, x]
    return out


@numba.njit(cache=True)
def _follow(flows_yx, ys, xs, n_steps, check_every, stall_distance):
    """Euler steps for all points (n_steps >= 1). _LANES points advance side by side, so that
    independent dependency chains keep the core busy: all lanes take a chunk of ``check_every``
    steps (the whole ``n_steps`` when 0 = never check) in a tight loop, then each is checked. A
    point finishes after ``n_steps`` steps, or at a check where it moved less than
    ``stall_distance`` since the previous check; its lane takes the next point."""
    h, w = flows_yx.shape[0], flows_yx.shape[1]
    chunk = check_every if check_every > 0 else n_steps
    ends = np.empty((ys.size, 2), np.float32)
    ly = np.empty(_LANES, np.float32)  # where each lane's point is
    lx = np.empty(_LANES, np.float32)
    mark_y = np.empty(_LANES, np.float32)  # where the point was at the last check
    mark_x = np.empty(_LANES, np.float32)
    point = np.full(_LANES, -1, np.int64)
    steps = np.zeros(_LANES, np.int64)
    limit = np.zeros(_LANES, np.int64)  # steps this lane takes in the current chunk
    next_point = 0
    stall2 = np.float32(stall_distance * stall_distance)
    while True:
        busy = False
        for lane in range(_LANES):
            if point[lane] < 0 and next_point < ys.size:
                point[lane], steps[lane] = next_point, 0
                ly[lane] = mark_y[lane] = ys[next_point]
                lx[lane] = mark_x[lane] = xs[next_point]
                next_point += 1
            limit[lane] = min(chunk, n_steps - steps[lane]) if point[lane] >= 0 else 0
            busy = busy or point[lane] >= 0
        if not busy:
            return ends
        for s in range(chunk):
            for lane in range(_LANES):
                if s < limit[lane]:
                    ly[lane], lx[lane] = _step(flows_yx, ly[lane], lx[lane], h, w)
        for lane in range(_LANES):
            if point[lane] < 0:
                continue
            steps[lane] += limit[lane]
            moved2 = (ly[lane] - mark_y[lane]) ** 2 + (lx[lane] - mark_x[lane]) ** 2
            mark_y[lane], mark_x[lane] = ly[lane], lx[lane]
            if steps[lane] >= n_steps or (check_every > 0 and moved2 < stall2):
                ends[point[lane], 0], ends[point[lane], 1] = ly[lane], lx[lane]
                point[lane] = -1


@numba.njit(cache=True, inline="always")
def _step(flows_yx, y, x, h, w):
    """One Euler step from (y, x) along the bilinearly interpolated flow, clipped to the image."""
    y0 = min(int(y), h - 1)
    x0 = min(int(x), w - 1)
    y1 = min(y0 + 1, h - 1)
    x1 = min(x0 + 1, w - 1)
    one = np.float32(1)  # keep every product in float32, as the stored points are
    ty = y - np.float32(y0)
    tx = x - np.float32(x0)
    a = (one - ty) * (one - tx)
    b = (one - ty) * tx
    c = ty * (one - tx)
    d = ty * tx
    dy = a * flows_yx[y0, x0, 0] + b * flows_yx[y0, x1, 0] + c * flows_yx[y1, x0, 0] + d * flows_yx[y1, x1, 0]
    dx = a * flows_yx[y0, x0, 1] + b * flows_yx[y0, x1, 1] + c * flows_yx[y1, x0, 1] + d * flows_yx[y1, x1, 1]
    y = min(max(y + dy, np.float32(0)), np.float32(h - 1))
    x = min(max(x + dx, np.float32(0)), np.float32(w - 1))
    return y, x


def _cluster_end_points(ends: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape) -> np.ndarray:
    """int32[H, W]: each start pixel labelled by the seed cluster its end point reached (0: none)."""
    ey = np.rint(ends[:, 0]).astype(np.int32)
    ex = np.rint(ends[:, 1]).astype(np.int32)
    counts = np.bincount(ey * shape[1] + ex, minlength=shape[0] * shape[1]).reshape(shape).astype(np.int32)
    seeds = _find_seeds(counts)
    order = np.argsort(-counts[seeds[:, 0], seeds[:, 1]], kind="stable")
    clusters = _grow_seeds(counts, seeds[order])
    labels = np.zeros(shape, np.int32)
    labels[ys, xs] = clusters[ey, ex]
    return labels


@numba.njit(cache=True)
def _find_seeds(counts):
    """int64[n, 2] pixels holding more than MIN_SEED_COUNT end points and the maximum of their window."""
    h, w = counts.shape
    found = []
    for y in range(h):
        for x in range(w):
            c = counts[y, x]
            if c <= MIN_SEED_COUNT:
                continue
            is_peak = True
            for yy in range(max(y - _SEED_WINDOW, 0), min(y + _SEED_WINDOW + 1, h)):
                for xx in range(max(x - _SEED_WINDOW, 0), min(x + _SEED_WINDOW + 1, w)):
                    if counts[yy, xx] > c:
                        is_peak = False
            if is_peak:
                found.append((y, x))
    seeds = np.empty((len(found), 2), np.int64)
    for i in range(len(found)):
        seeds[i, 0] = found[i][0]
        seeds[i, 1] = found[i][1]
    return seeds


@numba.njit(cache=True)
def _grow_seeds(counts, seeds):
    """Label each seed's cluster: breadth-first over 8-neighbours with >= _GROW_MIN_COUNT end points,
    at most _GROW_RADIUS steps from the seed; pixels already taken by an earlier seed are kept."""
    h, w = counts.shape
    clusters = np.zeros((h, w), np.int32)
    queue = np.empty(((2 * _GROW_RADIUS + 1) ** 2, 3), np.int64)
    n_clusters = 0
    for s in range(seeds.shape[0]):
        if clusters[seeds[s, 0], seeds[s, 1]] != 0:
            continue  # a plateau of equal peaks, or a peak inside a larger cluster
        n_clusters += 1
        clusters[seeds[s, 0], seeds[s, 1]] = n_clusters
        queue[0, 0], queue[0, 1], queue[0, 2] = seeds[s, 0], seeds[s, 1], 0
        head, tail = 0, 1
        while head < tail:
            y, x, depth = queue[head, 0], queue[head, 1], queue[head, 2]
            head += 1
            if depth == _GROW_RADIUS:
                continue
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    if clusters[yy, xx] == 0 and counts[yy, xx] >= _GROW_MIN_COUNT:
                        clusters[yy, xx] = n_clusters
                        queue[tail, 0], queue[tail, 1], queue[tail, 2] = yy, xx, depth + 1
                        tail += 1
    return clusters
