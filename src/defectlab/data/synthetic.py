"""A seeded generator of small synthetic MVTec-format datasets (tests and the demo use it).

Two product kinds: ``texture`` (a woven/striped surface with smooth shading noise) and ``object``
(a round part on a plain background). Defect types draw on top with a mask of exactly the pixels
they changed: ``scratch`` (thin bright line), ``hole`` (dark round spot), ``crack`` (dark jagged
polyline) and ``contamination`` (a coloured blob, grey in grayscale variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from defectlab.errors import ConfigError

DEFECTS = ("scratch", "hole", "crack", "contamination")
KINDS = ("texture", "object")


@dataclass(frozen=True)
class SynthConfig:
    kind: str = "texture"  # "texture" | "object"
    grayscale: bool = False  # save L images instead of RGB
    size: int = 128  # side of the square images, pixels
    n_train: int = 24  # good training images
    n_test_good: int = 8  # good test images
    n_per_defect: int = 6  # test images per defect type
    defects: tuple[str, ...] = DEFECTS
    image_format: str = "png"  # "png" | "jpg" | "bmp"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown synthetic kind '{self.kind}'; known: {', '.join(KINDS)}")
        unknown = sorted(set(self.defects) - set(DEFECTS))
        if unknown:
            raise ConfigError(f"unknown synthetic defect(s) {unknown}; known: {', '.join(DEFECTS)}")
        if self.image_format not in ("png", "jpg", "jpeg", "bmp"):
            raise ConfigError(f"unknown image format '{self.image_format}'; known: png, jpg, bmp")
        if self.size < 32:
            raise ConfigError(f"synthetic image size must be at least 32 px, got {self.size}")


def _base(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A good image as HxWx3 float in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # smooth low-frequency shading, different for every image
    coarse = rng.normal(0, 1, (5, 5))
    shade = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BICUBIC))
    shade = 0.04 * shade / (np.abs(shade).max() + 1e-6)
    if kind == "texture":
        phase = rng.uniform(0, 2 * math.pi, 2)
        period = size / 10.0
        weave = 0.5 + 0.12 * np.sin(2 * math.pi * xx / period + phase[0]) * np.sin(2 * math.pi * yy / period + phase[1])
        grain = rng.normal(0, 0.025, (size, size))
        gray = weave + grain + shade
        tint = np.array([0.95, 0.85, 0.7])
        rgb = gray[..., None] * tint[None, None, :] / tint.mean()
    elif kind == "object":
        cx, cy = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
        r = size * 0.36
        d = np.hypot(xx - cx, yy - cy)
        part = np.clip(r - d, 0, 1.5) / 1.5
        body = 0.65 + 0.1 * (1 - d / r) + shade + rng.normal(0, 0.015, (size, size))
        bg = 0.15 + rng.normal(0, 0.01, (size, size))
        gray = part * body + (1 - part) * bg
        rgb = gray[..., None] * np.array([0.8, 0.9, 1.05])[None, None, :]
    else:
        raise ValueError(f"unknown synthetic kind '{kind}'; known: {', '.join(KINDS)}")
    return np.clip(rgb, 0, 1)


def _region(kind: str, size: int, rng: np.random.Generator) -> tuple[float, float]:
    """A random defect centre on the product (inside the part for objects)."""
    if kind == "object":
        ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0, size * 0.22)
        return size / 2 + rad * math.cos(ang), size / 2 + rad * math.sin(ang)
    m = size * 0.2
    return rng.uniform(m, size - m), rng.uniform(m, size - m)


def _draw_defect(img: np.ndarray, defect: str, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Draw one defect in place; returns its HxW bool mask."""
    size = img.shape[0]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    cx, cy = _region(kind, size, rng)
    s = size / 128.0
    if defect == "scratch":
        ang, length = rng.uniform(0, math.pi), rng.uniform(30, 50) * s
        dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(2, round(2 * s)))
        color, alpha = np.array([1.0, 1.0, 1.0]), 0.85
    elif defect == "hole":
        r = rng.uniform(5, 9) * s
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        color, alpha = np.array([0.02, 0.02, 0.02]), 0.95
    elif defect == "crack":
        pts, ang = [(cx, cy)], rng.uniform(0, 2 * math.pi)
        for _ in range(7):
            ang += rng.uniform(-0.8, 0.8)
            step = rng.uniform(4, 7) * s
            pts.append((pts[-1][0] + step * math.cos(ang), pts[-1][1] + step * math.sin(ang)))
        draw.line(pts, fill=255, width=max(2, round(2 * s)), joint="curve")
        color, alpha = np.array([0.05, 0.03, 0.02]), 0.9
    elif defect == "contamination":
        r = rng.uniform(7, 11) * s
        poly = [(cx + r * rng.uniform(0.6, 1.2) * math.cos(t), cy + r * rng.uniform(0.6, 1.2) * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 9)[:-1]]
        draw.polygon(poly, fill=255)
        layer = layer.filter(ImageFilter.MaxFilter(3))
        color, alpha = np.array([0.15, 0.55, 0.2]), 0.8
    else:
        raise ValueError(f"unknown synthetic defect '{defect}'; known: {', '.join(DEFECTS)}")
    mask = np.asarray(layer) > 127
    img[mask] = (1 - alpha) * img[mask] + alpha * color
    return mask


def _save(arr: np.ndarray, path: Path, grayscale: bool) -> None:
    u8 = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(u8, "RGB")
    if grayscale:
        im = im.convert("L")
    im.save(path, quality=95) if path.suffix == ".jpg" else im.save(path)


def make_synthetic(out: str | Path, config: SynthConfig = SynthConfig(), *, category: str | None = None) -> Path:
    """Write one MVTec-format category under ``out/<category>`` and return its path.

    The same config and seed give byte-identical files.
    """
    cfg = config
    cat = Path(out) / (category or f"synthetic_{cfg.kind}{'_gray' if cfg.grayscale else ''}")
    rng = np.random.default_rng(cfg.seed)
    ext = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "bmp": ".bmp"}[cfg.image_format]
    plan: list[tuple[str, str, int]] = [("train", "good", cfg.n_train), ("test", "good", cfg.n_test_good)]
    plan += [("test", d, cfg.n_per_defect) for d in cfg.defects]
    for split, cls, n in plan:
        (cat / split / cls).mkdir(parents=True, exist_ok=True)
        if cls != "good":
            (cat / "ground_truth" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _base(cfg.kind, cfg.size, rng)
            stem = f"{i:03d}"
            if cls != "good":
                mask = _draw_defect(img, cls, cfg.kind, rng)
                mask_path = cat / "ground_truth" / cls / f"{stem}_mask.png"
                Image.fromarray((mask * 255).astype(np.uint8), "L").save(mask_path)
            _save(img, cat / split / cls / f"{stem}{ext}", cfg.grayscale)
    return cat


def make_synthetic_root(out: str | Path, kinds: Sequence[str] = KINDS, *, grayscale: bool = False,
                        seed: int = 0, **overrides: object) -> list[Path]:
    """Several categories under one root (MVTec's layout of a full download)."""
    return [make_synthetic(out, SynthConfig(kind=k, grayscale=grayscale, seed=seed + i, **overrides))  # type: ignore[arg-type]
            for i, k in enumerate(kinds)]
