"""Procedural landmark photos: the one synthetic image generator of lmr-jax.

Each landmark is a procedural scene (:func:`render_scene`): a building made of blocks with
roofs, windows, doors, columns, emblems and trees, textured with real photographic material from
images that ship inside matplotlib (a photograph, a terrain elevation model rendered as shaded
relief, an MRI slice), cropped, recoloured and combined. A view of a landmark
(:func:`render_view`) places it under its own sky, then varies viewpoint (perspective), scale,
crop, aspect ratio, illumination (gain, colour cast, gamma, light gradient), occlusion (people,
poles, boxes), blur, noise and JPEG quality. :func:`render_distractor` draws non-landmark
photos. :func:`landmark_photo_jpegs` renders a set of views as JPEG bytes (for benchmarks).
Everything is deterministic from the seeds given.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

# ----------------------------------------------------------------------------- textures


@functools.cache
def _bank() -> tuple[list[Image.Image], list[Image.Image]]:
    """Photographic materials from matplotlib's sample data: (colour images, gray images)."""
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "sample_data"
    try:
        photo = Image.open(d / "grace_hopper.jpg").convert("RGB")
        dem = np.load(d / "jacksboro_fault_dem.npz")["elevation"].astype(np.float32)
        topo = np.load(d / "topobathy.npz")["topo"].astype(np.float32)
        with gzip.open(d / "s1045.ima.gz") as f:
            mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)
    except OSError as e:
        raise RuntimeError(f"{d}: matplotlib's sample data is needed for textures: {e}") from e

    def gray(a: np.ndarray) -> Image.Image:
        lo, hi = np.percentile(a, [1, 99])
        return Image.fromarray((np.clip((a - lo) / (hi - lo + 1e-6), 0, 1) * 255).astype(np.uint8))

    def relief(z: np.ndarray, azimuth: float) -> np.ndarray:
        gy, gx = np.gradient(z)
        az = math.radians(azimuth)
        return (np.cos(az) * gx + np.sin(az) * gy) / (np.hypot(gx, gy).mean() + 1e-6)

    topo_big = np.asarray(gray(topo).resize((360, 270), Image.Resampling.BICUBIC), np.float32)
    grays = [gray(relief(dem, a)) for a in (30, 135, 250)] + [
        gray(mri[20:236, 30:236]), gray(relief(topo_big, 60)), photo.convert("L")]
    colours = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return colours, grays


def _material(rng: np.random.Generator, w: int, h: int, dark: tuple, light: tuple,
              colour_p: float = 0.2) -> Image.Image:
    """A (w, h) RGB texture: a random crop of a photographic source, recoloured dark..light."""
    colours, grays = _bank()
    use_colour = rng.random() < colour_p
    src = colours[rng.integers(len(colours))] if use_colour else grays[rng.integers(len(grays))]
    sw, sh = src.size
    frac = rng.uniform(0.15, 0.7)
    cw = max(8, int(sw * frac))
    ch = max(8, min(sh, int(cw * h / max(w, 1) * rng.uniform(0.7, 1.4))))
    x, y = rng.integers(0, sw - cw + 1), rng.integers(0, sh - ch + 1)
    tex = src.crop((x, y, x + cw, y + ch)).resize((max(w, 1), max(h, 1)),
                                                  Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        tex = tex.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if use_colour:
        tint = Image.new("RGB", tex.size, tuple(int(v) for v in light))
        return Image.blend(tex, ImageOps.autocontrast(Image.blend(tex, tint, 0.5)), 0.6)
    return ImageOps.colorize(ImageOps.autocontrast(tex, cutoff=1), black=dark, white=light)


def _rand_colour(rng: np.random.Generator, lo: int = 40, hi: int = 230) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


# Wall colours (dark, light): sandstone, brick, marble, concrete, ochre, slate, terracotta, jade.
_WALLS = [((90, 70, 40), (235, 215, 170)), ((80, 25, 15), (200, 90, 60)),
          ((120, 120, 125), (250, 250, 245)), ((60, 60, 65), (190, 190, 185)),
          ((100, 70, 10), (240, 190, 90)), ((30, 35, 50), (140, 150, 170)),
          ((90, 40, 20), (230, 140, 90)), ((20, 60, 50), (120, 200, 170))]
_ROOFS = [((20, 50, 40), (90, 170, 140)), ((60, 15, 10), (180, 60, 40)),
          ((30, 30, 35), (110, 110, 120)), ((90, 70, 10), (240, 200, 80)),
          ((20, 30, 70), (80, 110, 200))]


def _paste_shape(canvas: Image.Image, mask_draw, bbox, material: Image.Image) -> None:
    """Paste ``material`` (bbox-sized) into ``canvas`` through a shape drawn by ``mask_draw``."""
    x0, y0, x1, y1 = (int(round(v)) for v in bbox)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    mask = Image.new("L", (w, h), 0)
    mask_draw(ImageDraw.Draw(mask), -x0, -y0)
    canvas.paste(material.resize((w, h)) if material.size != (w, h) else material, (x0, y0), mask)


def render_scene(uid_seed: Sequence[int], s: int) -> Image.Image:
    """The canonical (s, s) RGBA picture of one landmark (transparent where the sky goes).

    ``uid_seed`` seeds everything (e.g. (dataset seed, 1, landmark uid)).
    """
    rng = np.random.default_rng(list(uid_seed))
    canvas = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    horizon = int(s * rng.uniform(0.72, 0.86))
    ground = _material(rng, s, s - horizon, *(_WALLS[rng.integers(len(_WALLS))]), colour_p=0.1)
    canvas.paste(ground, (0, horizon))

    kind = rng.choice(["building", "building", "building", "tower", "bridge"])
    cx = s * rng.uniform(0.4, 0.6)
    if kind == "tower":
        blocks = [(cx - s * rng.uniform(0.05, 0.09), cx + s * rng.uniform(0.05, 0.09),
                   s * rng.uniform(0.45, 0.62))]
    elif kind == "bridge":
        deck_y = horizon - s * rng.uniform(0.12, 0.22)
        wall, roof = _WALLS[rng.integers(len(_WALLS))], _ROOFS[rng.integers(len(_ROOFS))]
        x0, x1 = s * 0.02, s * 0.98
        _paste_shape(canvas, lambda d, ox, oy: d.rectangle(
            (x0 + ox, deck_y + oy, x1 + ox, horizon + oy), fill=255),
            (x0, deck_y, x1, horizon), _material(rng, int(x1 - x0), int(horizon - deck_y), *wall))
        n_arch = int(rng.integers(2, 6))
        span = (x1 - x0) / n_arch
        for i in range(n_arch):  # arches cut out of the deck show the sky
            ax = x0 + i * span + span * 0.12
            draw.ellipse((ax, deck_y + (horizon - deck_y) * 0.35, ax + span * 0.76,
                          horizon + (horizon - deck_y) * 0.5), fill=(0, 0, 0, 0))
        canvas.paste(ground.crop((0, 0, s, s - horizon)), (0, horizon))
        towers = rng.integers(1, 3)
        blocks = [(x0 + (x1 - x0) * f - s * 0.05, x0 + (x1 - x0) * f + s * 0.05,
                   s * rng.uniform(0.35, 0.5)) for f in ([0.3, 0.7] if towers == 2 else [0.5])]
        del roof
    else:
        n = int(rng.integers(1, 4))
        total = s * rng.uniform(0.45, 0.85)
        widths = rng.dirichlet(np.full(n, 2.0)) * total
        x, blocks = cx - total / 2, []
        heights = rng.uniform(0.2, 0.45, size=n) * s
        heights[rng.integers(n)] *= rng.uniform(1.0, 1.5)
        for w, h in zip(widths, heights, strict=True):
            blocks.append((x, x + w, h))
            x += w

    for bx0, bx1, bh in blocks:
        _block(canvas, rng, bx0, bx1, horizon - bh, horizon, s)
    for _ in range(int(rng.integers(0, 4))):  # trees in front
        tx = s * rng.choice([rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)])
        tr = s * rng.uniform(0.05, 0.11)
        ty = horizon - tr * rng.uniform(0.8, 2.0)
        draw.rectangle((tx - tr * 0.12, ty, tx + tr * 0.12, horizon + s * 0.02),
                       fill=(70, 45, 25, 255))
        leaf = _material(rng, int(2 * tr), int(2 * tr), (10, 40, 10), (110, 170, 70))
        _paste_shape(canvas, lambda d, ox, oy, tx=tx, ty=ty, tr=tr: d.ellipse(
            (tx - tr + ox, ty - tr + oy, tx + tr + ox, ty + tr + oy), fill=255),
            (tx - tr, ty - tr, tx + tr, ty + tr), leaf)
    return canvas


def _block(canvas: Image.Image, rng: np.random.Generator, x0: float, x1: float, top: float,
           base: float, s: int) -> None:
    """One building block: side face, textured facade, roof, windows, door, emblem, columns."""
    draw = ImageDraw.Draw(canvas)
    wall, roof = _WALLS[rng.integers(len(_WALLS))], _ROOFS[rng.integers(len(_ROOFS))]
    w, h = x1 - x0, base - top
    depth = w * rng.uniform(0.0, 0.25) * rng.choice([-1, 1])
    if abs(depth) > 1:  # a darker side face gives a 3-D look
        sx = x1 if depth > 0 else x0
        lift = abs(depth) * 0.5
        side = [(sx, top), (sx + depth, top - lift), (sx + depth, base - lift),
                (sx, base)]
        xs, ys = [p[0] for p in side], [p[1] for p in side]
        dark = tuple(int(v * 0.5) for v in wall[1])
        _paste_shape(canvas, lambda d, ox, oy: d.polygon([(px + ox, py + oy) for px, py in side],
                                                         fill=255),
                     (min(xs), min(ys), max(xs) + 1, max(ys) + 1),
                     _material(rng, int(max(xs) - min(xs)) + 1, int(max(ys) - min(ys)) + 1,
                               wall[0], dark))
    _paste_shape(canvas, lambda d, ox, oy: d.rectangle((x0 + ox, top + oy, x1 + ox, base + oy),
                                                       fill=255),
                 (x0, top, x1 + 1, base + 1), _material(rng, int(w) + 1, int(h) + 1, *wall))
    roof_kind = rng.choice(["flat", "gable", "dome", "spire", "stepped", "onion"])
    rmat = _material(rng, int(w) + 1, int(h) + 1, *roof)
    if roof_kind == "gable":
        rh = h * rng.uniform(0.2, 0.5)
        pts = [(x0 - w * 0.05, top), (x1 + w * 0.05, top), ((x0 + x1) / 2, top - rh)]
        _paste_shape(canvas, lambda d, ox, oy: d.polygon([(a + ox, b + oy) for a, b in pts],
                                                         fill=255),
                     (x0 - w * 0.05, top - rh, x1 + w * 0.05 + 1, top + 1), rmat)
    elif roof_kind in ("dome", "onion"):
        rw = w * rng.uniform(0.5, 0.9)
        rh = rw * rng.uniform(0.4, 0.8)
        bb = ((x0 + x1 - rw) / 2, top - rh, (x0 + x1 + rw) / 2, top + rh)
        _paste_shape(canvas, lambda d, ox, oy: d.pieslice(
            (bb[0] + ox, bb[1] + oy, bb[2] + ox, bb[3] + oy), 180, 360, fill=255),
            (bb[0], bb[1], bb[2] + 1, top + 1), rmat)
        if roof_kind == "onion":
            m = (x0 + x1) / 2
            draw.polygon([(m - rw * 0.08, top - rh + 2), (m + rw * 0.08, top - rh + 2),
                          (m, top - rh * 1.6)], fill=tuple(roof[1]) + (255,))
    elif roof_kind == "spire":
        rh = h * rng.uniform(0.5, 1.2)
        m = (x0 + x1) / 2
        pts = [(m - w * 0.3, top), (m + w * 0.3, top), (m, top - rh)]
        _paste_shape(canvas, lambda d, ox, oy: d.polygon([(a + ox, b + oy) for a, b in pts],
                                                         fill=255),
                     (m - w * 0.3, top - rh, m + w * 0.3 + 1, top + 1), rmat)
    elif roof_kind == "stepped":
        for k in range(1, int(rng.integers(2, 4))):
            inset = w * 0.15 * k
            sh = h * 0.12
            _paste_shape(canvas, lambda d, ox, oy, inset=inset, k=k, sh=sh: d.rectangle(
                (x0 + inset + ox, top - sh * k + oy, x1 - inset + ox, top - sh * (k - 1) + oy),
                fill=255), (x0 + inset, top - sh * k, x1 - inset + 1, top - sh * (k - 1) + 1),
                _material(rng, int(w) + 1, int(sh) + 2, *wall))
    else:
        draw.rectangle((x0 - 1, top - h * 0.03, x1 + 1, top), fill=tuple(roof[0]) + (255,))

    # Windows: a grid of rectangles, arches or circles, dark or lit.
    rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    shape = rng.choice(["rect", "arch", "round"])
    lit = rng.random() < 0.3
    colour = (_rand_colour(rng, 170, 255) if lit else _rand_colour(rng, 10, 70)) + (255,)
    mx, my = w * rng.uniform(0.08, 0.2), h * rng.uniform(0.08, 0.2)
    cw, chh = (w - 2 * mx) / cols, (h * 0.75 - my) / rows
    ww, wh = cw * rng.uniform(0.35, 0.7), chh * rng.uniform(0.4, 0.75)
    for r in range(rows):
        for c in range(cols):
            wx = x0 + mx + c * cw + (cw - ww) / 2
            wy = top + my + r * chh + (chh - wh) / 2
            if shape == "round":
                draw.ellipse((wx, wy, wx + ww, wy + min(ww, wh)), fill=colour)
            else:
                draw.rectangle((wx, wy + (min(ww / 2, wh) if shape == "arch" else 0), wx + ww,
                                wy + wh), fill=colour)
                if shape == "arch":
                    draw.pieslice((wx, wy, wx + ww, wy + ww), 180, 360, fill=colour)
    if rng.random() < 0.7:  # door
        dw, dh = w * rng.uniform(0.12, 0.3), h * rng.uniform(0.15, 0.3)
        m = (x0 + x1) / 2
        draw.rectangle((m - dw / 2, base - dh + min(dw / 2, dh), m + dw / 2, base),
                       fill=(25, 20, 15, 255))
        draw.pieslice((m - dw / 2, base - dh, m + dw / 2, base - dh + dw), 180, 360,
                      fill=(25, 20, 15, 255))
    if rng.random() < 0.3:  # columns along the bottom
        n = int(rng.integers(3, 8))
        for i in range(n):
            px = x0 + w * (i + 0.5) / n
            draw.rectangle((px - w * 0.015 - 1, base - h * 0.35, px + w * 0.015 + 1, base),
                           fill=tuple(wall[1]) + (255,))
    if rng.random() < 0.6:  # emblem: a clock / rose window with spokes, or a star
        r = min(w, h) * rng.uniform(0.1, 0.2)
        ex, ey = (x0 + x1) / 2, top + h * rng.uniform(0.15, 0.3)
        c1, c2 = _rand_colour(rng) + (255,), _rand_colour(rng) + (255,)
        k = int(rng.integers(3, 9))
        if rng.random() < 0.5:
            draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=c1, outline=c2,
                         width=max(1, int(r / 5)))
            for i in range(k):
                a = 2 * math.pi * i / k
                draw.line((ex, ey, ex + r * math.cos(a), ey + r * math.sin(a)), fill=c2,
                          width=max(1, int(r / 6)))
        else:
            pts = [(ex + (r if i % 2 == 0 else r * 0.45) * math.cos(math.pi * i / k - math.pi / 2),
                    ey + (r if i % 2 == 0 else r * 0.45) * math.sin(math.pi * i / k - math.pi / 2))
                   for i in range(2 * k)]
            draw.polygon(pts, fill=c1, outline=c2)
    if rng.random() < 0.3:  # flags on the roof line
        for _ in range(int(rng.integers(1, 3))):
            fx = rng.uniform(x0, x1)
            fh = s * 0.06
            draw.line((fx, top, fx, top - fh), fill=(40, 40, 40, 255), width=1)
            draw.rectangle((fx, top - fh, fx + fh * 0.8, top - fh * 0.55),
                           fill=_rand_colour(rng, 60, 255) + (255,))


# ----------------------------------------------------------------------------- views


def _sky(rng: np.random.Generator, s: int) -> Image.Image:
    """A (s, s) RGBA sky for one view: time-of-day gradient with clouds from a gray texture."""
    palettes = [((70, 120, 200), (170, 205, 240)), ((120, 125, 135), (200, 200, 205)),
                ((60, 50, 110), (245, 150, 90)), ((20, 25, 60), (90, 80, 120)),
                ((100, 160, 220), (235, 240, 245))]
    top, bottom = palettes[rng.integers(len(palettes))]
    top = np.clip(np.asarray(top) + rng.integers(-20, 21, 3), 0, 255)
    bottom = np.clip(np.asarray(bottom) + rng.integers(-20, 21, 3), 0, 255)
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    grad = (top * (1 - t) + bottom * t).astype(np.uint8)
    sky = Image.fromarray(np.broadcast_to(grad, (s, s, 3)).copy())
    if rng.random() < 0.7:
        clouds = _material(rng, s // 4, s // 4, (0, 0, 0), (255, 255, 255), colour_p=0.0)
        k = rng.uniform(1.0, 1.8)
        alpha = clouds.convert("L").resize((s, s), Image.Resampling.BILINEAR).filter(
            ImageFilter.GaussianBlur(s / 40)).point(lambda v: max(0, v - 110) * k)
        sky.paste(Image.new("RGB", (s, s), (245, 245, 245)), (0, 0), alpha)
    return sky.convert("RGBA")


def _homography(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` (4, 2) to input ``src``."""
    a = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.asarray(a, np.float64), src.reshape(-1)).tolist())


def random_out_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """A random (width, height) with long side ``size``; 70 % landscape, short side 62-100 %."""
    short = int(round(size * rng.uniform(0.62, 1.0)))
    return (size, short) if rng.random() < 0.7 else (short, size)


def _photometric(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Illumination (gain, colour cast, gamma, light gradient), blur and sensor noise."""
    a = np.asarray(img, np.float32) / 255.0
    h, w = a.shape[:2]
    gain = rng.uniform(1 - 0.4 * strength, 1 + 0.35 * strength)
    cast = 1 + rng.uniform(-0.12, 0.12, 3) * strength
    gamma = math.exp(rng.uniform(-0.3, 0.3) * strength)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = 1 + rng.uniform(0, 0.35) * strength * (
        (xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang))
    a = np.clip(a * gain * cast * grad[..., None], 0, 1) ** gamma
    if rng.random() < 0.5:
        a = a + rng.normal(0, rng.uniform(0.005, 0.025) * strength, a.shape).astype(np.float32)
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        radius = rng.uniform(0.3, 1.3) * strength * max(h, w) / 128
        img = img.filter(ImageFilter.GaussianBlur(radius))
    return img


def _occlude(img: Image.Image, rng: np.random.Generator, n: int) -> None:
    """Draw ``n`` occluders (people, poles, boxes, foliage) in place."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        kind = rng.choice(["person", "pole", "box", "foliage"])
        x, y = rng.uniform(0, w), rng.uniform(h * 0.3, h)
        if kind == "person":
            ph = h * rng.uniform(0.25, 0.6)
            pw = ph * 0.28
            col = _rand_colour(rng, 10, 200)
            draw.ellipse((x - pw * 0.3, y - ph, x + pw * 0.3, y - ph + pw * 0.6),
                         fill=(200, 160, 130))
            draw.rounded_rectangle((x - pw / 2, y - ph + pw * 0.6, x + pw / 2, y + ph * 0.2),
                                   radius=pw / 4, fill=col)
        elif kind == "pole":
            pw = w * rng.uniform(0.01, 0.04)
            draw.rectangle((x, 0 if rng.random() < 0.5 else y - h * 0.6, x + pw, h),
                           fill=_rand_colour(rng, 10, 120))
        else:
            bw, bh = w * rng.uniform(0.1, 0.35), h * rng.uniform(0.08, 0.3)
            tex = _material(rng, int(bw) + 1, int(bh) + 1, _rand_colour(rng, 0, 90),
                            _rand_colour(rng, 120, 255), colour_p=0.3 if kind == "box" else 0.0)
            mask = Image.new("L", tex.size, 0)
            md = ImageDraw.Draw(mask)
            if kind == "box":
                md.rectangle((0, 0, tex.size[0], tex.size[1]), fill=255)
            else:
                md.ellipse((0, 0, tex.size[0], tex.size[1]), fill=255)
            img.paste(tex, (int(x - bw / 2), int(y - bh / 2)), mask)


def render_view(scene: Image.Image, rng: np.random.Generator, out_size: tuple[int, int],
                hard: bool = False) -> Image.Image:
    """One photo of a landmark scene: sky, viewpoint, crop, light, occlusion, blur, noise."""
    s = scene.size[0]
    comp = Image.alpha_composite(_sky(rng, s), scene).convert("RGB")
    ow, oh = out_size
    scale = rng.uniform(0.22, 0.45) if hard else math.exp(rng.uniform(math.log(0.38), 0))
    win_w = s * scale
    win_h = min(s, win_w * oh / ow)
    win_w = win_h * ow / oh
    cx = s / 2 + rng.uniform(-0.3, 0.3) * (s - win_w * 0.4)
    cy = s * 0.55 + rng.uniform(-0.2, 0.2) * (s - win_h * 0.4)
    jit = (0.2 if hard else 0.12) * win_w
    rot = math.radians(rng.uniform(-6, 6))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [win_w / 2, win_h / 2]
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    src = corners @ rmat.T + [cx, cy] + rng.uniform(-jit, jit, size=(4, 2))
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float64)
    fill = comp.getpixel((s // 2, s - 1))
    img = comp.transform((ow, oh), Image.Transform.PERSPECTIVE, _homography(dst, src),
                         Image.Resampling.BILINEAR, fillcolor=fill)
    n_occ = int(rng.integers(1, 4)) if (hard or rng.random() < 0.5) else 0
    _occlude(img, rng, n_occ)
    return _photometric(img, rng, 1.5 if hard else 1.0)


def render_distractor(rng: np.random.Generator, out_size: tuple[int, int]) -> Image.Image:
    """A non-landmark photo: a portrait crop, an indoor corner, or a close-up of materials."""
    ow, oh = out_size
    kind = rng.choice(["portrait", "indoor", "closeup"], p=[0.25, 0.35, 0.4])
    colours, _ = _bank()
    if kind == "portrait":
        photo = colours[rng.integers(len(colours))]
        pw, ph = photo.size
        cw = pw * rng.uniform(0.35, 0.9)
        chh = min(ph, cw * oh / ow)
        x, y = rng.uniform(0, pw - cw), rng.uniform(0, ph - chh)
        img = photo.crop((int(x), int(y), int(x + cw), int(y + chh))).resize((ow, oh))
    elif kind == "indoor":
        img = _material(rng, ow, oh, _rand_colour(rng, 0, 90), _rand_colour(rng, 120, 255), 0.3)
        draw = ImageDraw.Draw(img)
        vx = ow * rng.uniform(0.3, 0.7)
        draw.polygon([(vx, 0), (ow, 0), (ow, oh), (vx, oh * 0.8)], fill=_rand_colour(rng, 60, 230))
        for _ in range(int(rng.integers(1, 4))):
            fx, fy = rng.uniform(0, ow), rng.uniform(0, oh)
            draw.rectangle((fx, fy, fx + ow * 0.2, fy + oh * 0.25), fill=_rand_colour(rng))
    else:
        img = _material(rng, ow, oh, _rand_colour(rng, 0, 90), _rand_colour(rng, 120, 255), 0.4)
        _occlude(img, rng, int(rng.integers(1, 4)))
    return _photometric(img, rng)


def landmark_photo_jpegs(n: int, *, width: int, height: int, quality: int = 90,
                         num_landmarks: int = 8, seed: int = 0) -> list[bytes]:
    """``n`` JPEG views (``width`` x ``height`` px, ``quality``) of ``num_landmarks`` scenes.

    Views cycle over the landmarks; each scene is rendered at twice the long side, as the
    synthetic dataset does.
    """
    s = 2 * max(width, height)
    scenes = [render_scene((seed, 1, uid), s) for uid in range(num_landmarks)]
    out = []
    for i in range(n):
        view = render_view(scenes[i % num_landmarks], np.random.default_rng([seed, 2, i]),
                           (width, height))
        buf = io.BytesIO()
        view.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
