"""Applying drawn augmentation parameters to a whole batch, as tensor ops on the batch's device.

Order (nnU-Net v2's): rotation + scaling with the centre crop from the larger read patch, Gaussian noise, Gaussian
blur, multiplicative brightness, contrast, low-resolution simulation, inverted gamma, gamma, mirroring.

Per-sample choices live in CPU tensors, so which samples/channels a transform touches is known on the host without
a device sync; only those are computed (gathered, transformed, scattered back), and untouched samples are
bit-identical to a plain centre crop. The inputs are never modified in place.

Labels go through the affine resampling as *linearly interpolated one-hot maps followed by an argmax* rather than
nearest neighbour: nearest neighbour aliases thin structures and staircases boundaries under scaling, whereas the
argmax of interpolated indicators places each boundary where the image's own (trilinear) boundary lands, so image
and label stay aligned to sub-voxel accuracy. nnU-Net does the same (batchgeneratorsv2 mode_seg='bilinear').
Samples outside the read patch get a padding class, which ends as background (nnU-Net pads with -1 and maps -1 to 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from voxelbase.training.augment_params import AugmentParams


def apply_augmentation(
    params: AugmentParams,
    image: torch.Tensor,
    label: torch.Tensor,
    *,
    patch_size: Sequence[int],
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: image (B, C, *S) float, label (B, 1, *S) integer -> (B, C, *patch), (B, 1, *patch).

    S is the read patch (at least `patch_size` for full context; smaller is zero padded). `num_classes` (labels
    0..K-1) saves one device sync; without it the label maximum is used. Negative labels (loader padding) and
    voxels from outside the read patch come out as 0. Same params and inputs give the same output on a device.
    """
    d = params.spatial_dims
    patch = tuple(int(p) for p in patch_size)
    if image.ndim != d + 2 or label.ndim != d + 2 or len(patch) != d:
        raise ValueError(
            f"expected image (B, C, {d} spatial axes), label (B, 1, ...) and a {d}-D patch_size; got image "
            f"{tuple(image.shape)}, label {tuple(label.shape)}, patch_size {patch}"
        )
    if image.shape[0] != params.batch_size or image.shape[1] != params.channels:
        raise ValueError(
            f"params were drawn for batch {params.batch_size} x {params.channels} channels, image has "
            f"{tuple(image.shape[:2])}: pass channels=/batch_size= to draw_params accordingly"
        )
    if image.shape[2:] != label.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in spatial shape")
    if not image.is_floating_point():
        raise TypeError(f"image must be floating point, got {image.dtype}")
    if num_classes is None:
        num_classes = int(label.max().item()) + 1 if label.numel() else 1
    out_dtype = label.dtype
    if out_dtype in (torch.uint8, torch.bool):
        label = label.to(torch.int16)  # room for the -1 padding class

    image, label = _spatial(params, image, label, patch, max(num_classes, 1))
    image = _noise(params, image)
    image = _blur(params, image)
    image = image * params.brightness.to(image.device, image.dtype).view(*params.brightness.shape, *[1] * d)
    image = _contrast(params, image)
    image = _lowres(params, image)
    image = _gamma(
        image, params.gamma_inverted, params.do_gamma_inverted, invert=True, retain=params.gamma_retain_stats
    )
    image = _gamma(image, params.gamma, params.do_gamma, invert=False, retain=params.gamma_retain_stats)
    image, label = _mirror(params.mirror, image, label)
    label = torch.where(label < 0, torch.zeros((), dtype=label.dtype, device=label.device), label)
    return image, label.to(out_dtype)


def _mirror(mirror: torch.Tensor, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample along its drawn axes: one flip over all of them per sample, one copy of the batch."""
    axes = [[a + 1 for a in range(mirror.shape[1]) if mirror[b, a]] for b in range(mirror.shape[0])]
    if not any(axes):
        return image, label
    image = torch.stack([x.flip(a) if a else x for x, a in zip(image, axes)])
    label = torch.stack([x.flip(a) if a else x for x, a in zip(label, axes)])
    return image, label


# ---------------------------------------------------------------- spatial


def _crop_start(size: int, patch: int) -> int:
    """Where the centre crop starts (negative: pad); nnU-Net's crop_tensor convention."""
    return size // 2 - patch // 2


def _center_crop(x: torch.Tensor, patch: tuple[int, ...], pad_value: float) -> torch.Tensor:
    d = len(patch)
    starts = [_crop_start(s, p) for s, p in zip(x.shape[-d:], patch)]
    if any(st < 0 or st + p > s for st, p, s in zip(starts, patch, x.shape[-d:])):
        pad = []
        for st, p, s in reversed(list(zip(starts, patch, x.shape[-d:]))):
            before = max(0, -st)
            pad += [before, max(0, st + p - s)]
        x = F.pad(x, pad, value=pad_value)
        starts = [max(st, 0) for st in starts]
    return x[(..., *[slice(st, st + p) for st, p in zip(starts, patch)])]


def affine_matrices(params: AugmentParams) -> torch.Tensor:
    """Per-sample rotation @ scaling, in array axis order, mapping patch offsets to read-patch offsets (float64).

    3-D: Rz(a2) @ Ry(a1) @ Rx(a0) @ diag(s) with R* rotating about array axis 0, 1, 2 (batchgeneratorsv2's
    create_affine_matrix_3d); 2-D and 2-D-in-3-D: R(a) @ diag(s) in the (y, x) plane.
    """
    a = params.angles.double()
    s = params.scales.double()
    c, n = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a[:, 0]), torch.zeros_like(a[:, 0])
    if a.shape[1] == 1:
        rot = torch.stack([torch.stack([c[:, 0], -n[:, 0]], -1), torch.stack([n[:, 0], c[:, 0]], -1)], -2)
    else:
        rx = torch.stack(
            [
                torch.stack([one, zero, zero], -1),
                torch.stack([zero, c[:, 0], -n[:, 0]], -1),
                torch.stack([zero, n[:, 0], c[:, 0]], -1),
            ],
            -2,
        )
        ry = torch.stack(
            [
                torch.stack([c[:, 1], zero, n[:, 1]], -1),
                torch.stack([zero, one, zero], -1),
                torch.stack([-n[:, 1], zero, c[:, 1]], -1),
            ],
            -2,
        )
        rz = torch.stack(
            [
                torch.stack([c[:, 2], -n[:, 2], zero], -1),
                torch.stack([n[:, 2], c[:, 2], zero], -1),
                torch.stack([zero, zero, one], -1),
            ],
            -2,
        )
        rot = rz @ ry @ rx
    return rot @ torch.diag_embed(s)


def _source_coordinates(
    matrix: torch.Tensor, read: tuple[int, ...], patch: tuple[int, ...], device: torch.device
) -> list[torch.Tensor]:
    """Per axis j, the read-patch coordinate (voxel units) each patch voxel samples: (n, *patch) float32 each.

    Patch voxel i sits at offset p = i - (P-1)/2 from the patch centre and samples the read patch at A p + c, where
    c is the centre of the integer centre crop, so identity parameters reproduce that crop exactly. The field is a
    sum of one 1-D ramp per patch axis, so it costs d broadcast additions per axis instead of an affine_grid.
    """
    n, d = matrix.shape[0], len(patch)
    centre = [_crop_start(r, p) + (p - 1) / 2 for r, p in zip(read, patch)]
    ramps = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in patch]
    fields = []
    for j in range(d):
        field = None
        for i in range(d):
            term = matrix[:, j, i, None] * ramps[i][None] + (centre[j] if i == d - 1 else 0.0)
            shape = [n] + [1] * d
            shape[1 + i] = patch[i]
            term = term.to(device, torch.float32).view(shape)
            field = term if field is None else field + term
        fields.append(field)
    return fields


def _resample(
    image: torch.Tensor, label: torch.Tensor, matrix: torch.Tensor, patch: tuple[int, ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample image (linear) and label (argmax of linearly interpolated one-hot maps) at A p + c.

    Both read the same 2^d neighbouring voxels of every output voxel, gathered once: the image is their weighted
    sum (grid_sample's bilinear/trilinear with zero padding), the label the class with the largest summed weight
    among them, which is the argmax of interpolated indicators without interpolating one map per class. Voxels
    whose neighbours all agree (nearly all) keep that label directly; only boundary voxels are voted on. Outside
    the read patch counts as the padding class -1 (it comes out as background), as before.
    """
    n, c = image.shape[:2]
    read = tuple(image.shape[2:])
    d = len(read)
    coords = _source_coordinates(matrix, read, patch, image.device)
    # two voxels of padding all round, 0 (image) / -1 (label): a coordinate clamped to [-2, R] then has both
    # neighbours in the padding whenever it lies a voxel or more outside. Index arithmetic stays in int32
    # (int64 conversions are several times slower on the CPU).
    padded = [r + 4 for r in read]
    strides = [1] * d
    for axis in range(d - 2, -1, -1):
        strides[axis] = strides[axis + 1] * padded[axis + 1]
    volume = strides[0] * padded[0]
    img = F.pad(image, [2, 2] * d, value=0.0).reshape(-1)
    lbl = F.pad(label.to(torch.int16), [2, 2] * d, value=-1).reshape(-1)

    base, fracs = None, []  # flat index of each output voxel's lowest neighbour, and its offsets from it
    for axis, x in enumerate(coords):
        low = torch.floor(x)
        fracs.append(x - low)
        low = low.clamp_(-2, read[axis]).add_(2).to(torch.int32).mul_(strides[axis])
        base = low if base is None else base.add_(low)
    # the 2^d neighbours differ from the lowest by a constant flat offset (x fastest): a shifted view of the
    # flat volume gathers each of them with the same index
    offsets = [sum(b * st for b, st in zip(bits, strides)) for bits in itertools.product((0, 1), repeat=d)]
    sample = torch.arange(n, device=image.device, dtype=torch.int32).view(n, *[1] * d)

    def neighbours(values: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        flat = index.reshape(-1)
        return [values[off:].index_select(0, flat).view(n, *patch) for off in offsets]

    out_img = torch.empty((n, c, *patch), dtype=image.dtype, device=image.device)
    for ch in range(c):
        values = neighbours(img, base + (sample * (c * volume) + ch * volume))
        for axis in range(d - 1, -1, -1):  # linear interpolation, one axis at a time (x first)
            f = fracs[axis].to(image.dtype)
            values = [torch.lerp(values[2 * j], values[2 * j + 1], f) for j in range(len(values) // 2)]
        out_img[:, ch] = values[0]

    corners = neighbours(lbl, base + sample * volume)
    first = corners[0]
    agree = torch.ones_like(first, dtype=torch.bool)
    for v in corners[1:]:
        agree &= v == first
    out_lbl = first.clone()
    if image.device.type == "cpu":  # vote on the boundary voxels only (finding them would sync an accelerator)
        where = (~agree).reshape(-1).nonzero().flatten()
        if where.numel():
            pick = [t.reshape(-1)[where] for t in fracs]
            weights = [_corner_weight(bits, pick) for bits in itertools.product((0, 1), repeat=d)]
            voted = _vote([v.reshape(-1)[where] for v in corners], weights, num_classes)
            out_lbl.view(-1)[where] = voted
    else:
        weights = [_corner_weight(bits, fracs) for bits in itertools.product((0, 1), repeat=d)]
        out_lbl = torch.where(agree, first, _vote(corners, weights, num_classes))
    return out_img, out_lbl[:, None].to(label.dtype)


def _corner_weight(bits: tuple[int, ...], fracs: list[torch.Tensor]) -> torch.Tensor:
    """Multilinear weight of the neighbour at `bits` (0: lower, 1: upper per axis) given per-axis fractions."""
    weight = None
    for bit, f in zip(bits, fracs):
        term = f if bit else 1 - f
        weight = term if weight is None else weight * term
    return weight


def _vote(values: list[torch.Tensor], weights: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """The class with the largest summed weight among the neighbours; ties go to the lower class, padding last."""
    zero = torch.zeros((), dtype=weights[0].dtype, device=weights[0].device)
    best = best_cls = None
    for k in [*range(num_classes), -1]:
        score = None
        for v, w in zip(values, weights):
            term = torch.where(v == k, w, zero)
            score = term if score is None else score.add_(term)
        if best is None:
            best, best_cls = score, torch.full_like(values[0], k)
            continue
        better = score > best
        best = torch.where(better, score, best)
        best_cls.masked_fill_(better, k)
    return best_cls


def _spatial(
    params: AugmentParams, image: torch.Tensor, label: torch.Tensor, patch: tuple[int, ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    out_img = _center_crop(image, patch, 0.0).contiguous()  # a copy: outputs never alias the inputs
    out_lbl = _center_crop(label, patch, -1).contiguous()
    idx_cpu = params.do_spatial.nonzero().flatten()
    if idx_cpu.numel() == 0:
        return out_img, out_lbl
    idx = idx_cpu.to(image.device)
    img, lbl = image.index_select(0, idx), label.index_select(0, idx)
    matrix = affine_matrices(params)[idx_cpu]
    if params.dummy_2d:
        # slice-wise: fold z into the batch and resample each slice in plane, as nnU-Net's Convert3DTo2D does
        z = patch[0]
        img = _center_crop(img, (z, *img.shape[-2:]), 0.0)
        lbl = _center_crop(lbl, (z, *lbl.shape[-2:]), -1)
        n, c = img.shape[:2]
        img = img.transpose(1, 2).reshape(n * z, c, *img.shape[-2:])
        lbl = lbl.transpose(1, 2).reshape(n * z, 1, *lbl.shape[-2:])
        res_img, res_lbl = _resample(img, lbl, matrix.repeat_interleave(z, dim=0), patch[1:], num_classes)
        res_img = res_img.reshape(n, z, c, *patch[1:]).transpose(1, 2)
        res_lbl = res_lbl.reshape(n, z, 1, *patch[1:]).transpose(1, 2)
    else:
        res_img, res_lbl = _resample(img, lbl, matrix, patch, num_classes)
    return out_img.index_copy(0, idx, res_img.contiguous()), out_lbl.index_copy(0, idx, res_lbl.contiguous())


# ---------------------------------------------------------------- intensity


def _noise(params: AugmentParams, image: torch.Tensor) -> torch.Tensor:
    idx_cpu = params.do_noise.nonzero().flatten()
    if idx_cpu.numel() == 0:
        return image
    gen = torch.Generator(device=image.device)
    gen.manual_seed(params.noise_seed)
    noise = torch.randn((idx_cpu.numel(), *image.shape[1:]), generator=gen, device=image.device, dtype=image.dtype)
    std = params.noise_std[idx_cpu].to(image.device, image.dtype).view(-1, *[1] * (image.ndim - 1))
    return image.index_add(0, idx_cpu.to(image.device), noise * std)


def _gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """(n,) sigmas -> (n, k_max) kernels, batchgeneratorsv2's size rule (truncate 6, nearest odd), zero padded."""
    sizes = []
    for s in sigma.tolist():
        v = s * 6 + 0.5
        r = round(v)
        sizes.append(r if r % 2 == 1 else (r + 1 if v - r >= 0 else r - 1))
    k_max = max(sizes)
    out = torch.zeros((len(sizes), k_max), dtype=torch.float64)
    for i, (s, k) in enumerate(zip(sigma.tolist(), sizes)):
        x = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=torch.float64)
        pdf = torch.exp(-0.5 * (x / s) ** 2)
        off = (k_max - k) // 2
        out[i, off : off + k] = pdf / pdf.sum()
    return out


def _blur(params: AugmentParams, image: torch.Tensor) -> torch.Tensor:
    b, c = image.shape[:2]
    spatial = image.shape[2:]
    d = len(spatial)
    sig = params.blur_sigma.reshape(b * c, d)
    pairs_cpu = (sig > 0).any(1).nonzero().flatten()
    if pairs_cpu.numel() == 0:
        return image
    pairs = pairs_cpu.to(image.device)
    flat = image.reshape(b * c, *spatial)
    x = flat.index_select(0, pairs)[None]  # (1, n, *spatial): one grouped convolution per axis
    n = pairs.numel()
    conv = F.conv3d if d == 3 else F.conv2d
    for axis in range(d):
        kernels = _gaussian_kernels(sig[pairs_cpu, axis]).to(image.device, image.dtype)
        k = kernels.shape[1]
        half = k // 2
        shape = [n, 1] + [1] * d
        shape[2 + axis] = k
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = half
        mode = "reflect" if half < spatial[axis] else "replicate"
        x = conv(F.pad(x, pad, mode=mode), kernels.view(shape), groups=n)
    return flat.index_copy(0, pairs, x[0]).reshape(image.shape)


def _contrast(params: AugmentParams, image: torch.Tensor) -> torch.Tensor:
    idx_cpu = params.do_contrast.nonzero().flatten()
    if idx_cpu.numel() == 0:
        return image
    idx = idx_cpu.to(image.device)
    x = image.index_select(0, idx)
    dims = tuple(range(2, image.ndim))
    f = params.contrast[idx_cpu].to(image.device, image.dtype).view(*x.shape[:2], *[1] * len(dims))
    mean = x.mean(dim=dims, keepdim=True)
    y = (x - mean) * f + mean
    if params.contrast_preserve_range:
        y = torch.minimum(torch.maximum(y, x.amin(dim=dims, keepdim=True)), x.amax(dim=dims, keepdim=True))
    return image.index_copy(0, idx, y)


def _lowres_axis_indices(n: int, n_low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Downsample with nearest-exact to n_low, upsample linearly back to n, as one gather per axis.

    Returns (i0, i1, lam), each (pairs, n): out[j] = (1 - lam) x[i0] + lam x[i1] in original indices, matching
    F.interpolate(mode='nearest-exact') followed by F.interpolate(mode='(tri)linear', align_corners=False).
    """
    j = torch.arange(n, dtype=torch.float32)[None]
    low = n_low.to(torch.float32)[:, None]
    src = ((low / n) * (j + 0.5) - 0.5).clamp(min=0)
    i0 = src.floor()
    lam = src - i0
    i0 = i0.long()
    i1 = torch.where(i0 < low.long() - 1, i0 + 1, i0)

    def nearest(i: torch.Tensor) -> torch.Tensor:
        return torch.clamp(((i.to(torch.float32) + 0.5) * (n / low)).floor().long(), max=n - 1)

    return nearest(i0), nearest(i1), lam


def _lowres(params: AugmentParams, image: torch.Tensor) -> torch.Tensor:
    b, c = image.shape[:2]
    spatial = image.shape[2:]
    d = len(spatial)
    sizes = torch.tensor(spatial, dtype=torch.float64)
    n_low = torch.round(params.lowres_zoom.reshape(b * c, d).double() * sizes).clamp(min=1).long()
    pairs_cpu = (n_low != sizes.long()).any(1).nonzero().flatten()
    if pairs_cpu.numel() == 0:
        return image
    pairs = pairs_cpu.to(image.device)
    flat = image.reshape(b * c, *spatial)
    x = flat.index_select(0, pairs)
    for axis in range(d):
        n = spatial[axis]
        i0, i1, lam = _lowres_axis_indices(n, n_low[pairs_cpu, axis])
        view = [pairs.numel()] + [1] * d
        view[1 + axis] = n
        i0, i1 = (t.view(view).to(image.device).expand(x.shape) for t in (i0, i1))
        lam = lam.view(view).to(image.device, image.dtype)
        x = x.gather(1 + axis, i0) * (1 - lam) + x.gather(1 + axis, i1) * lam
    return flat.index_copy(0, pairs, x).reshape(image.shape)


def _gamma(image: torch.Tensor, gamma: torch.Tensor, do: torch.Tensor, *, invert: bool, retain: bool) -> torch.Tensor:
    """x -> range-normalized x ** gamma, per channel; optionally on -x, and re-standardized to the input's stats."""
    idx_cpu = do.nonzero().flatten()
    if idx_cpu.numel() == 0:
        return image
    idx = idx_cpu.to(image.device)
    x = image.index_select(0, idx)
    if invert:
        x = -x
    dims = tuple(range(2, image.ndim))
    g = gamma[idx_cpu].to(image.device, image.dtype).view(*x.shape[:2], *[1] * len(dims))
    eps = 1e-7
    if retain:
        mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    y = ((x - lo) / rng.clamp(min=eps)).pow(g) * rng + lo
    if retain:
        y = (y - y.mean(dim=dims, keepdim=True)) * (std / y.std(dim=dims, keepdim=True).clamp(min=eps)) + mean
    if invert:
        y = -y
    return image.index_copy(0, idx, y)
