"""The list of unreadable training images skipped during a run: ``<workdir>/bad_images.tsv``.

One tab-separated line per skipped sample (an image drawn twice is listed twice), with a header::

    stage  step  row  id  reason

``step`` is the stage's iteration (1-based, the step whose batch held the image), ``row`` the
image list row. A resumed run first drops the lines after its restored step
(:meth:`BadImageLog.rewind`), then sees the same skipped rows again, so the file lists every
skipped sample once, as an uninterrupted run would.
"""

from __future__ import annotations

import os

HEADER = "stage\tstep\trow\tid\treason\n"


class BadImageLog:
    """Appends to, counts and rewinds ``bad_images.tsv``.

    Args:
      path: the file (created on the first :meth:`add`).
      enabled: False on processes other than 0 (they only read it).
    """

    def __init__(self, path: str, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def _rows(self) -> list[tuple[int, int, str]]:
        """(stage, step, line) of every complete line."""
        if not os.path.isfile(self.path):
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                parts = line.split("\t")
                if not line.endswith("\n") or len(parts) < 5 or not parts[0].isdigit():
                    continue  # the header, or a line cut short by a kill
                out.append((int(parts[0]), int(parts[1]), line))
        return out

    def count(self, stage: int, up_to_step: int) -> int:
        """Skipped samples of ``stage`` at steps <= ``up_to_step``."""
        return sum(1 for s, t, _ in self._rows() if s == stage and t <= up_to_step)

    def first(self, stage: int, n: int = 3) -> list[str]:
        """The first ``n`` entries of ``stage`` as ``"id (reason)"``."""
        out = []
        for s, _, line in self._rows():
            if s == stage and len(out) < n:
                parts = line.rstrip("\n").split("\t", 4)
                out.append(f"{parts[3]} ({parts[4]})")
        return out

    def rewind(self, stage: int, up_to_step: int) -> None:
        """Keeps the lines of earlier stages and of ``stage`` up to ``up_to_step``."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        keep = [line for s, t, line in self._rows()
                if s < stage or (s == stage and t <= up_to_step)]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(HEADER + "".join(keep))
        os.replace(tmp, self.path)

    def add(self, stage: int, step: int, row: int, image_id: str, reason: str) -> None:
        if not self.enabled:
            return
        new = not os.path.isfile(self.path)
        clean = " ".join(str(reason).split())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write((HEADER if new else "") + f"{stage}\t{step}\t{row}\t{image_id}\t{clean}\n")
