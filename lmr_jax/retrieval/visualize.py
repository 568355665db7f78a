"""A picture of retrieval results: one row per query, its top results framed green or red."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

THUMB = 128


def thumbnail(data: bytes | None, size: int = THUMB) -> np.ndarray:
    """(size, size, 3) uint8 thumbnail of encoded image bytes (grey when missing/unreadable)."""
    if data is not None:
        try:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            scale = size / max(img.width, img.height)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
            return np.asarray(canvas)
        except (OSError, ValueError, SyntaxError):
            pass
    return np.full((size, size, 3), 128, np.uint8)


def draw_results(path: str | os.PathLike, query_ids: Sequence[str],
                 results: Sequence[Sequence[str]], correct: Sequence[Sequence[bool | None]],
                 load: Callable[[str], bytes | None], title: str = "") -> None:
    """Save a PNG grid: column 0 the query, then its ranked results.

    Args:
      query_ids: Q query ids; results: per query the ranked result ids (same length R).
      correct: per query and result True (green frame), False (red) or None (no frame).
      load: id -> encoded image bytes (None when unavailable).
    """
    nq = len(query_ids)
    nr = max((len(r) for r in results), default=0)
    fig, axes = plt.subplots(nq, nr + 1, figsize=(1.6 * (nr + 1), 1.7 * nq), squeeze=False)
    for q, qid in enumerate(query_ids):
        ax = axes[q, 0]
        ax.imshow(thumbnail(load(qid)))
        ax.set_title(f"query {qid[:10]}", fontsize=7)
        for r in range(nr):
            ax = axes[q, r + 1]
            if r < len(results[q]):
                ax.imshow(thumbnail(load(results[q][r])))
                ok = correct[q][r]
                if ok is not None:
                    for spine in ax.spines.values():
                        spine.set_edgecolor("#1a9c1a" if ok else "#d62020")
                        spine.set_linewidth(4)
                ax.set_title(f"{r + 1}", fontsize=7)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[q, len(results[q]) + 1:]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
