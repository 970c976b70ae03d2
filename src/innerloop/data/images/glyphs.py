"""Glyphs: the embedded default few-shot benchmark, Omniglot-shaped, shipped inside the package.

Characters of many writing systems were rendered once from Debian's fonts (``fonts-noto-core``,
``fonts-dejavu-core``) by ``tools/build_glyphs.py`` into ``assets/glyphs.npz`` (described by
``assets/glyphs_manifest.json``: fonts and licences, alphabets, characters, split, parameters, hash).
For every character the asset holds 1–4 renderings from different faces (fonts that cover it),
``uint8 [32, 32]``, white strokes on black, centred, the longest side of the ink scaled to 26 px.
The split is by alphabet (no alphabet in two splits). Classes are named ``Alphabet/U+XXXX``.

At load time each character gets ``instances`` images (like Omniglot's 20 drawers), made with torch
from a generator seeded by ``seed``: a random stored face; a random stroke width (a blend of two
neighbouring levels among 3×3 erosion, as stored, 3×3 dilation, dilated twice); a random affine map
(rotation ±15°, scale, aspect, shear, translation) plus a smooth elastic warp (4×4 random control
points, bicubic), all sampled in one ``grid_sample`` from 32×32 to 28×28. The output is
``uint8 [instances, 1, 28, 28]``, white ink on black (high = ink), the polarity of the inverted
Omniglot. The ranges are the module constants below.

Every split, the training one included, is a fixed set of instances per seed: episodes stay a pure
function of the sampler's generator (:class:`~innerloop.data.episodes.FewShotImages`), the data is
one in-memory :class:`~innerloop.data.images.base.TensorSplit` like Omniglot's 20 drawings per
character, and the random draws of a character depend only on ``(seed, character)``, so its
instances are the same whichever split (or user split file) it lands in. For more training
diversity, raise ``instances`` or vary ``seed``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from innerloop.data.images._common import check_split, fail, read_split_file, split_classes
from innerloop.data.images.base import DatasetError, TensorSplit, register_dataset

ASSET = Path(__file__).parent / "assets" / "glyphs.npz"
MANIFEST = Path(__file__).parent / "assets" / "glyphs_manifest.json"
SPLITS = ("train", "val", "test")
SIZE = 28  # output images are SIZE × SIZE

# augmentation ranges (uniform draws): stroke level in 3×3 max-filter steps (< 0 erodes, > 0 dilates),
# rotation in degrees, log-scale, log-aspect, shear, translation (in half-widths: 0.1 = 1.4 px at 28 px),
# elastic warp: displacement of WARP_GRID × WARP_GRID control points (same units), bicubically upsampled
STROKE = (-0.3, 0.8)
ROTATE_DEG = 15.0
LOG_SCALE = (math.log(0.8), math.log(1.05))
LOG_ASPECT = 0.08
SHEAR = 0.25
SHIFT = 0.1
WARP, WARP_GRID = 0.1, 4

# near-duplicate criterion, shared with tools/build_glyphs.py: no two characters whose canonical renderings
# (the first stored face) overlap this much (see near_duplicates) are both kept
DEDUP_THRESHOLD = 0.93
DEDUP_ROTATIONS = (-8.0, 0.0, 8.0)
BLUR_SIGMA = 1.0  # of similarity_features (choice of faces, .notdef check)


@dataclass(frozen=True)
class GlyphAsset:
    """The packed asset: renderings ``images[offsets[i]:offsets[i + 1]]`` belong to character ``i``."""

    images: np.ndarray  # uint8 [R, 32, 32]
    offsets: np.ndarray  # int64 [n + 1]
    codepoints: np.ndarray  # int64 [n]
    alphabet: np.ndarray  # int64 [n], index into alphabets
    alphabets: list[str]
    alphabet_split: list[str]  # split of each alphabet

    @property
    def names(self) -> list[str]:
        """Class names ``Alphabet/U+XXXX``."""
        return [f"{self.alphabets[a]}/U+{cp:04X}" for a, cp in zip(self.alphabet.tolist(), self.codepoints.tolist(),
                                                                    strict=True)]

    def split_indices(self, split: str) -> list[int]:
        return [i for i, a in enumerate(self.alphabet.tolist()) if self.alphabet_split[a] == split]


@functools.cache
def asset() -> GlyphAsset:
    """Read the packed asset once per process."""
    try:
        z = np.load(ASSET, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(f"glyphs: cannot read the packaged asset {ASSET}: {e} (rebuild it with "
                           "`python tools/build_glyphs.py`)") from None
    with z:
        split_code = z["alphabet_split"].tolist()
        return GlyphAsset(images=z["images"], offsets=z["offsets"].astype(np.int64),
                          codepoints=z["codepoints"].astype(np.int64), alphabet=z["alphabet"].astype(np.int64),
                          alphabets=[str(a) for a in z["alphabets"].tolist()],
                          alphabet_split=[SPLITS[s] for s in split_code])


def manifest() -> dict:
    """The asset's manifest (fonts, licences, alphabets, split, build parameters, hashes)."""
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def similarity_features(images: np.ndarray) -> np.ndarray:
    """Features whose dot product is the similarity of two renderings.

    ``[n, S, S]`` (uint8, or floats in [0, 1]) → ``float32 [n, S²]``: Gaussian blur (σ = 1 px, zero
    padding), then zero mean and unit norm, so the dot product is the Pearson correlation of the
    blurred bitmaps. The blur makes it tolerant to stroke width and sub-pixel placement; the
    renderings are already centred and scaled to the same extent.
    """
    x = images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)
    radius = 3
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / BLUR_SIGMA) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        p = np.pad(x, [(0, 0)] + [(radius, radius) if a == axis else (0, 0) for a in (1, 2)])
        size = x.shape[axis]
        x = sum(k[j] * np.take(p, np.arange(j, j + size), axis=axis) for j in range(2 * radius + 1))
    x = x.reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate ``[n, S, S]`` bitmaps about their centre (bilinear, zero outside): floats in [0, 1]."""
    x = images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)
    n, s, _ = x.shape
    c = (s - 1) / 2
    t = math.radians(degrees)
    yy, xx = np.meshgrid(np.arange(s) - c, np.arange(s) - c, indexing="ij")
    # each output pixel samples the input at the inversely rotated position
    xs = math.cos(t) * xx + math.sin(t) * yy + c + 1  # +1: one pixel of zero padding
    ys = -math.sin(t) * xx + math.cos(t) * yy + c + 1
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = xs - x0, ys - y0
    x0, y0 = np.clip(x0, 0, s + 1), np.clip(y0, 0, s + 1)
    p = np.pad(x, ((0, 0), (1, 2), (1, 2)))
    return (p[:, y0, x0] * (1 - fx) * (1 - fy) + p[:, y0, x0 + 1] * fx * (1 - fy)
            + p[:, y0 + 1, x0] * (1 - fx) * fy + p[:, y0 + 1, x0 + 1] * fx * fy)


def _grow(ink: np.ndarray) -> np.ndarray:
    """Boolean ``[n, S, S]`` masks grown by one pixel in the 8-neighbourhood (3×3 dilation)."""
    p = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    s = ink.shape[1]
    h = p[:, :, :-2] | p[:, :, 1:-1] | p[:, :, 2:]
    return (h[:, :-2] | h[:, 1:-1] | h[:, 2:])[:, :s, :s]


def near_duplicates(images: np.ndarray, threshold: float = DEDUP_THRESHOLD,
                    block: int = 1024) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, s)``, ``i < j``, of renderings whose overlap ``s`` is at least ``threshold``.

    Ink is a pixel ≥ 50 % grey. ``cover(A, B)`` is the fraction of A's ink pixels that lie within one
    pixel (8-neighbourhood) of B's ink; ``s = max over θ in DEDUP_ROTATIONS of
    min(cover(A, turn(B, θ)), cover(turn(B, θ), A))``: each glyph lies on the other, up to a small
    turn (the augmentation rotates by up to ±10°). The counts are integer dot products, so the
    result does not depend on the BLAS library.
    """
    n = len(images)
    ink = (images >= 128).reshape(n, -1).astype(np.float32)
    near = _grow(images >= 128).reshape(n, -1).astype(np.float32)
    count = np.maximum(ink.sum(axis=1), 1.0)
    turned = []
    for r in DEDUP_ROTATIONS:
        t = rotate(images, r) >= 0.5
        t_ink = t.reshape(n, -1).astype(np.float32)
        turned.append((t_ink, _grow(t).reshape(n, -1).astype(np.float32), np.maximum(t_ink.sum(axis=1), 1.0)))
    pairs: dict[tuple[int, int], float] = {}
    for s in range(0, n, block):
        e = min(s + block, n)
        best = np.zeros((e - s, n), np.float32)
        for t_ink, t_near, t_count in turned:
            a_on_b = (ink[s:e] @ t_near.T) / count[s:e, None]
            b_on_a = (near[s:e] @ t_ink.T) / t_count[None, :]
            np.maximum(best, np.minimum(a_on_b, b_on_a), out=best)
        r, c = np.nonzero(best >= threshold)
        for i, j, v in zip((r + s).tolist(), c.tolist(), best[r, c].tolist(), strict=True):
            if i != j:
                key = (min(i, j), max(i, j))
                pairs[key] = max(v, pairs.get(key, 0.0))
    return sorted((i, j, v) for (i, j), v in pairs.items())


def _dilate(x: torch.Tensor) -> torch.Tensor:
    """3×3 grey-level dilation (max filter) of ``[n, S, S]``, as maxima of shifted copies (much faster
    than ``max_pool2d`` for one channel on CPU)."""
    p = F.pad(x, (1, 1, 1, 1))
    h = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(h[:, :-2], h[:, 1:-1]), h[:, 2:])


@contextlib.contextmanager
def _single_thread():
    """Run torch ops on one intra-op thread, then restore the setting. The augmentation is a short burst
    of small memory-bound ops; on a busy 2-core machine two threads made it 3-10× slower (0.5 s vs 5 s
    for the training split), on an idle one they gain little."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _stroke_levels() -> torch.Tensor:
    """Every stored rendering at four stroke widths, ``uint8 [R, 4, S, S]``: eroded once (3×3),
    as stored, dilated once, dilated twice. Instances blend two neighbouring levels."""
    x = torch.from_numpy(asset().images)
    d = _dilate(x)
    return torch.stack([255 - _dilate(255 - x), x, d, _dilate(d)], dim=1)


def augment(a: GlyphAsset, chars: list[int], seed: int, instances: int, chunk: int = 4096) -> list[torch.Tensor]:
    """``instances`` augmented images per character of ``chars``: ``uint8 [instances, 1, 28, 28]`` each.

    The random draws are made for every character of the asset from ``seed`` and then indexed, so a
    character's images depend only on ``(seed, character, instances)``.
    """
    n_all = len(a.codepoints)
    g = torch.Generator().manual_seed(int(seed))
    draws = 8 + 2 * WARP_GRID**2
    u = torch.rand(n_all, instances, draws, generator=g, dtype=torch.float64)
    sel = torch.as_tensor(chars, dtype=torch.long)
    u = u[sel].reshape(-1, draws)  # [M, draws] for M = len(chars) * instances
    offsets = torch.from_numpy(a.offsets)
    n_faces = (offsets[1:] - offsets[:-1])[sel].repeat_interleave(instances)
    face = offsets[:-1][sel].repeat_interleave(instances) + (u[:, 0] * n_faces).long().clamp(max=n_faces - 1)

    def lerp(lo_hi, t):
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t

    # stroke level 0 = eroded, 1 = as drawn, 2 = dilated, 3 = dilated twice; blend floor and floor + 1
    level = 1 + lerp(STROKE, u[:, 1])
    low = level.floor().long().clamp(0, 2)
    frac = (level - low).float()
    rot = math.radians(ROTATE_DEG) * (2 * u[:, 2] - 1)
    scale = torch.exp(lerp(LOG_SCALE, u[:, 3]))
    aspect = torch.exp(LOG_ASPECT * (2 * u[:, 4] - 1))
    shear = SHEAR * (2 * u[:, 5] - 1)
    shift = SHIFT * (2 * u[:, 6:8] - 1)
    # the image is mapped by translate ∘ rotate ∘ shear ∘ scale; grid_sample needs the inverse map
    sx, sy = scale * aspect, scale / aspect
    cos, sin = torch.cos(rot), torch.sin(rot)
    fwd = torch.zeros(len(u), 3, 3, dtype=torch.float64)
    fwd[:, 0, 0], fwd[:, 0, 1] = cos * sx, (cos * shear - sin) * sy
    fwd[:, 1, 0], fwd[:, 1, 1] = sin * sx, (sin * shear + cos) * sy
    fwd[:, :2, 2] = shift
    fwd[:, 2, 2] = 1
    theta = torch.linalg.inv(fwd)[:, :2].float()  # [M, 2, 3]
    # output pixel centres in [-1, 1] (align_corners=False convention)
    coords = (torch.arange(SIZE, dtype=torch.float32) * 2 + 1) / SIZE - 1
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    base = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(SIZE * SIZE)], dim=1)  # [28², 3]

    # bicubic upsampling of the warp's control points as a matrix [WARP_GRID², SIZE²]
    basis = torch.eye(WARP_GRID**2).view(-1, 1, WARP_GRID, WARP_GRID)
    upsample = F.interpolate(basis, size=(SIZE, SIZE), mode="bicubic", align_corners=True).view(WARP_GRID**2, -1)

    levels = _stroke_levels()
    out = torch.empty(len(u), 1, SIZE, SIZE, dtype=torch.uint8)
    with torch.no_grad(), _single_thread():
        for s in range(0, len(u), chunk):
            e = min(s + chunk, len(u))
            f, lo, t = face[s:e], low[s:e], frac[s:e].view(-1, 1, 1, 1)
            x = levels[f, lo].unsqueeze(1).float()
            x += (levels[f, lo + 1].unsqueeze(1).float() - x) * t
            grid = (base @ theta[s:e].transpose(1, 2)).view(e - s, SIZE, SIZE, 2)
            # smooth local warp: random displacements of coarse control points, upsampled (a linear map)
            ctrl = (2 * u[s:e, 8:] - 1).float().view((e - s) * 2, WARP_GRID**2) * WARP
            grid += (ctrl @ upsample).view(e - s, 2, SIZE, SIZE).permute(0, 2, 3, 1)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out[s:e] = x.round_().clamp_(0, 255).to(torch.uint8)
    return list(out.view(len(chars), instances, 1, SIZE, SIZE).unbind(0))


@register_dataset(
    "glyphs",
    layouts="embedded in the package (innerloop/data/images/assets/glyphs.npz); no root needed",
)
def load(root, split: str, *, split_file=None, seed: int = 0, instances: int = 20) -> TensorSplit:
    """The ``split`` of glyphs: one class per character, ``instances`` uint8 ``[1, 28, 28]`` images
    each (white on black), fixed by ``seed``. ``root`` is ignored (the data ships with the package).
    The built-in split is by alphabet (no alphabet in two splits); ``split_file`` (TOML/JSON, see
    :mod:`innerloop.data.images._common`) overrides it with class names like ``Latin/U+0041``."""
    check_split("glyphs", split)
    if int(instances) < 1:
        raise fail(f"glyphs: instances must be at least 1, got {instances}")
    a = asset()
    names = a.names
    if split_file:
        table = read_split_file(split_file, "glyphs")
        index = {n: i for i, n in enumerate(names)}
        chars = [index[n] for n in split_classes("glyphs", split, names, table, str(split_file))]
    else:
        chars = a.split_indices(split)
    data = augment(a, chars, seed, int(instances))
    return TensorSplit("glyphs", split, [names[i] for i in chars], data)
