"""Training checkpoints with orbax: asynchronous, keep the last K, resumable mid-stage.

A checkpoint of step s (iterations completed in the stage) is a directory ``<dir>/<s>/`` with
three items:

* ``state``: the :class:`~lmr_jax.train.state.TrainState` (parameters, batch statistics and
  frozen variables, optimiser state, step, skipped-step count, loss scale), ``StandardSave``;
* ``meta``: JSON (stage, step, epoch, seed, config hash, ...);
* ``data``: the input iterator's state (grain's checkpoint handler: one JSON file per process).

Saves are asynchronous: ``save`` returns once the arrays are copied off the devices; orbax
writes into a temporary directory and renames it when complete, so a process killed during a
save leaves the previous checkpoint intact (the incomplete one is ignored and cleaned up).

A complete checkpoint damaged later (a truncated or edited file) is found when restoring:
:meth:`Checkpointer.restore_latest` names it, moves it to ``<dir>/../damaged_checkpoints/<s>/``
(kept for inspection, out of orbax's way) and falls back to the previous checkpoint; at least
two are kept for that reason (``max_to_keep`` >= 2).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from lmr_jax.train.state import TrainState


def abstract_like(tree: Any) -> Any:
    """``ShapeDtypeStruct`` (with sharding) of every array leaf: a restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def _root_cause(error: BaseException) -> str:
    """The first error of ``error``'s chain (orbax's clean-up after a failed write may raise a
    secondary error, e.g. ENOTEMPTY, that hides the ENOSPC that started it)."""
    seen, e = [], error
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    root = next((x for x in reversed(seen) if isinstance(x, OSError) and x.errno is not None),
                seen[-1])
    return f"{type(root).__name__}: {root}"


class Checkpointer:
    """Saves and restores (TrainState, meta, data iterator) under one directory.

    Args:
      directory: where the step directories go (created).
      max_to_keep: number of most recent checkpoints kept.
      async_save: write in a background thread.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
                 async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        if max_to_keep < 2:
            raise ValueError(f"checkpoint max_to_keep={max_to_keep}: keep at least 2, so that a "
                             "damaged latest checkpoint has a complete one before it")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The last complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict[str, Any],
             data_iterator: Any | None = None) -> None:
        """Starts saving checkpoint ``step`` (returns before the files are written)."""
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except OSError as e:
            raise OSError(e.errno, f"{self.directory}/{step}: cannot write this checkpoint "
                          f"({_root_cause(e)}); the complete checkpoints {self.all_steps()} are "
                          "intact: fix the cause (e.g. free disk space) and re-run to resume "
                          "from the last of them") from e

    def restore(self, step: int, target: TrainState,
                data_iterator: Any | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restores checkpoint ``step``.

        Args:
          step: a step from :meth:`latest_step` / :meth:`all_steps`.
          target: a TrainState (or its :func:`abstract_like`) giving structure, dtypes and
            shardings.
          data_iterator: restored in place when given.

        Returns:
          (state, meta).
        """
        items = {"state": ocp.args.StandardRestore(abstract_like(target)),
                 "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise ValueError(f"{self.directory}/{step}: cannot restore this checkpoint ({e}). "
                             "It was written by a different configuration or is damaged; "
                             "use another workdir or delete the checkpoint.") from e
        return out["state"], dict(out["meta"])

    def restore_latest(self, target: TrainState, data_iterator: Any | None = None,
                       report: Callable[[str], None] = print
                       ) -> tuple[int | None, TrainState, dict[str, Any]]:
        """Restores the newest checkpoint that restores; damaged newer ones are moved aside.

        Returns:
          (step, state, meta), or (None, target, {}) when there is no checkpoint.

        Raises:
          ValueError: there are checkpoints and none of them restores (nothing is moved: the
            cause is more likely a different configuration than damage).
        """
        steps = sorted(self.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state, meta = self.restore(step, target, data_iterator)
            except Exception as e:  # noqa: BLE001 - orbax / tensorstore / json errors vary
                failures.append((step, e))
                report(f"warning: checkpoint {self.directory}/{step} cannot be restored "
                       f"({type(e.__cause__ or e).__name__}: {e.__cause__ or e}); "
                       "trying the previous one")
                continue
            for bad, _ in failures:
                self._move_aside(bad, report)
            return step, state, meta
        if failures:
            raise ValueError(f"{self.directory}: none of the checkpoints {steps} can be restored "
                             f"(newest: {failures[0][1]})") from failures[0][1]
        return None, target, {}

    def _move_aside(self, step: int, report: Callable[[str], None]) -> None:
        src = os.path.join(self.directory, str(step))
        dst_dir = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, str(step))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.move(src, dst)
        self._manager.reload()
        report(f"moved the damaged checkpoint {src} to {dst}")

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
