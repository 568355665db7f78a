"""Training output: a tqdm progress bar, TensorBoard scalars and a metrics JSONL file.

Only process 0 writes; on the other processes every method is a no-op. Files, under the
workdir: ``metrics.jsonl`` (one JSON object per logged step, appended, so a resumed run
continues it; a resumed stage first drops the records after its restored step with
:meth:`MetricsLogger.rewind`, so that readers see every step once) and ``tensorboard/`` (tensorboardX event files).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tqdm import tqdm


class MetricsLogger:
    """Writes scalars of training steps to TensorBoard and JSONL, and drives the progress bar.

    Args:
      workdir: output directory.
      enabled: False on processes other than 0.
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self._jsonl_path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def start_stage(self, desc: str, *, total_images: int, done_images: int) -> None:
        """Opens a progress bar counting images, with rate and ETA."""
        if not self.enabled:
            return
        self.close_bar()
        self._bar = tqdm(total=total_images, initial=done_images, desc=desc, unit="img",
                         unit_scale=True, dynamic_ncols=True, smoothing=0.1)

    def advance(self, images: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(images)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def scalars(self, global_step: int, values: dict[str, float],
                extra: dict[str, Any] | None = None) -> None:
        """Writes ``values`` to TensorBoard (``train/<name>``) and one JSONL line."""
        if not self.enabled:
            return
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"train/{k}", v, global_step)
        record = {"time": time.time(), "global_step": global_step, **(extra or {}), **values}
        self._jsonl.write(json.dumps(record) + "\n")

    def rewind(self, last_global_step: int) -> int:
        """Drops the metrics.jsonl records after ``last_global_step`` (steps a killed run logged
        after its last checkpoint, which the resumed run logs again) and any line cut short by
        the kill. Returns the number of records dropped."""
        if not self.enabled:
            return 0
        self._jsonl.close()
        keep, dropped = [], 0
        with open(self._jsonl_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped += 1
                    continue
                if record.get("global_step", 0) <= last_global_step:
                    keep.append(json.dumps(record) + "\n")
                else:
                    dropped += 1
        tmp = self._jsonl_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(keep))
        os.replace(tmp, self._jsonl_path)
        self._jsonl = open(self._jsonl_path, "a", buffering=1)
        return dropped

    def message(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self.enabled:
            tqdm.write(text)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
