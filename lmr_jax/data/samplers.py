"""Training samplers: per-epoch sequences of list rows, deterministic from (seed, epoch).

A sampler turns an image list (duck-typed: ``labels`` (N,) int, ``noisy`` (N,) bool,
``continents`` (N,) str) into ``epoch_indices(epoch)``: an array of ``epoch_length`` list rows.
Every epoch is drawn from ``np.random.default_rng([seed, epoch])`` alone, so any epoch can be
rebuilt in any process without replaying earlier ones; resuming mid-epoch is the pipeline's job
(grain's iterator state holds the position).

Rows that can never be trained on are left out before sampling: rows with label -1
(non-landmark images) and the rows given in ``exclude_rows`` (images found unreadable when the
store was prepared). All samplers draw ``len(eligible rows)`` indices per epoch, so an "epoch"
means the same amount of data for each.

Registry (:data:`SAMPLERS`, an :class:`lmr_jax.registry.Registry`; ``SAMPLERS.build(name,
image_list, batch_size=..., seed=..., **options)``); a new sampler is one ``Sampler`` subclass
decorated with ``@SAMPLERS.register(name)`` plus, if it has options, a ``sampler.<name>``
sub-dict in :func:`lmr_jax.data.pipeline.default_train_config`:

* ``softmax``: a fresh permutation of the eligible rows every epoch (the reference default).
* ``pk``: identity-uniform P x K batches: each batch of ``batch_size`` rows holds P =
  batch_size / K distinct identities with K images each. Identities are taken in order from
  successive random permutations of all identities; each permutation is cut to a multiple of P
  so that no identity appears twice in one batch. An identity with >= K images gives K distinct
  images (a uniformly random K-subset), one with fewer gives K draws with replacement. The epoch
  holds ``len(eligible) // batch_size`` batches.
* ``pairs``: P x 2 batches of (anchor, positive) pairs for the N-pairs loss: each batch holds
  P = batch_size / 2 distinct identities, two images each, at consecutive positions (rows 2i,
  2i + 1). It is ``pk`` with K = 2: an identity with a single image gives it twice.
* ``continent``: continent-aware sampling (docs/reference.md, Samplers): ``len(eligible)`` draws with
  replacement; continent c gets ``share_c / sum(shares of continents present)`` of them
  (continents absent from the list are dropped and the shares renormalised; counts are rounded
  by largest remainder so they sum exactly), within a continent ``clean_fraction`` (0.66) of the
  draws are uniform over its clean rows and the rest over its noisy rows (all from one group
  when the other is empty), then the whole epoch is shuffled.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

from lmr_jax.registry import Registry

SAMPLERS: Registry[type[Sampler]] = Registry("sampler")

CONTINENT_SHARES: dict[str, float] = {
    "Asia": 0.5,
    "Europe": 0.2,
    "Africa": 0.15,
    "North America": 0.1,
    "South America": 0.02,
    "Antarctica": 0.01,
    "Oceania": 0.01,
    "OTHER": 0.01,
}
CLEAN_FRACTION = 0.66


def eligible_rows(labels: np.ndarray, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """(M,) int64 sorted rows with a landmark label (>= 0) that are not in ``exclude_rows``."""
    labels = np.asarray(labels)
    keep = labels >= 0
    if exclude_rows is not None:
        exclude_rows = np.asarray(exclude_rows, dtype=np.int64).reshape(-1)
        if exclude_rows.size and (exclude_rows.min() < 0 or exclude_rows.max() >= len(labels)):
            raise ValueError(f"exclude_rows must lie in [0, {len(labels)}), got "
                             f"[{exclude_rows.min()}, {exclude_rows.max()}]")
        keep[exclude_rows] = False
    return np.flatnonzero(keep).astype(np.int64)


class Sampler(abc.ABC):
    """Per-epoch list-row sequences.

    Attributes:
      seed: base seed; epoch e uses ``np.random.default_rng([seed, e])``.
      rows: (M,) int64 eligible list rows.
      epoch_length: number of rows returned by :meth:`epoch_indices`.
    """

    def __init__(self, image_list: Any, *, batch_size: int, seed: int,
                 exclude_rows: np.ndarray | None = None):
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rows = eligible_rows(image_list.labels, exclude_rows)
        if len(self.rows) == 0:
            raise ValueError("sampler: the image list has no row with a label >= 0 left to train on")
        self.epoch_length = len(self.rows)

    def _rng(self, epoch: int) -> np.random.Generator:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return np.random.default_rng([self.seed, int(epoch)])

    @abc.abstractmethod
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """(epoch_length,) int64 list rows of epoch ``epoch`` (0-based)."""


@SAMPLERS.register("softmax")
class SoftmaxSampler(Sampler):
    """A random permutation of the eligible rows per epoch."""

    def __init__(self, image_list: Any, *, batch_size: int, seed: int,
                 exclude_rows: np.ndarray | None = None):
        super().__init__(image_list, batch_size=batch_size, seed=seed, exclude_rows=exclude_rows)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self._rng(epoch).permutation(self.rows)


@SAMPLERS.register("pk")
class PKSampler(Sampler):
    """Identity-uniform batches of P identities x K images (see the module docstring)."""

    def __init__(self, image_list: Any, *, batch_size: int, seed: int,
                 exclude_rows: np.ndarray | None = None, num_instances: int = 4):
        super().__init__(image_list, batch_size=batch_size, seed=seed, exclude_rows=exclude_rows)
        self.num_instances = k = int(num_instances)
        if k <= 0 or self.batch_size % k:
            raise ValueError(f"pk sampler: batch size {self.batch_size} must be a multiple of "
                             f"num_instances (K) = {k}")
        self.num_identities_per_batch = self.batch_size // k
        labels = np.asarray(image_list.labels)[self.rows]
        order = np.argsort(labels, kind="stable")
        self._sorted_rows = self.rows[order]
        self.identities, self._starts, self._counts = np.unique(
            labels[order], return_index=True, return_counts=True)
        if len(self.identities) < self.num_identities_per_batch:
            raise ValueError(f"pk sampler: {len(self.identities)} identities cannot fill "
                             f"P = {self.num_identities_per_batch} per batch "
                             f"(batch size {self.batch_size}, K = {k})")
        self.num_batches = len(self.rows) // self.batch_size
        if self.num_batches == 0:
            raise ValueError(f"pk sampler: {len(self.rows)} images are fewer than one batch of "
                             f"{self.batch_size}")
        self.epoch_length = self.num_batches * self.batch_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        p, k = self.num_identities_per_batch, self.num_instances
        n_ids = len(self.identities)
        per_perm = (n_ids // p) * p
        needed = self.num_batches * p
        perms = [rng.permutation(n_ids)[:per_perm] for _ in range(-(-needed // per_perm))]
        ids = np.concatenate(perms)[:needed]                                  # (needed,)
        # Shuffle rows within each identity: sort by (identity, random key).
        key = rng.random(len(self._sorted_rows))
        ident_of_sorted = np.repeat(np.arange(n_ids), self._counts)
        shuffled = self._sorted_rows[np.lexsort((key, ident_of_sorted))]
        counts, starts = self._counts[ids], self._starts[ids]                 # (needed,)
        # >= K images: K consecutive rows of the shuffled group from a random start (distinct).
        offset = rng.integers(0, counts)[:, None] + np.arange(k)[None, :]
        distinct = offset % counts[:, None]
        # < K images: K uniform draws with replacement.
        replaced = np.floor(rng.random((needed, k)) * counts[:, None]).astype(np.int64)
        pos = np.where((counts >= k)[:, None], distinct, replaced)
        return shuffled[starts[:, None] + pos].reshape(-1)


@SAMPLERS.register("pairs")
class PairSampler(PKSampler):
    """P x 2 (anchor, positive) batches: :class:`PKSampler` with K = 2 (module docstring)."""

    def __init__(self, image_list: Any, *, batch_size: int, seed: int,
                 exclude_rows: np.ndarray | None = None):
        if int(batch_size) % 2:
            raise ValueError(f"pairs sampler: batch size {batch_size} must be even "
                             "((anchor, positive) pairs)")
        super().__init__(image_list, batch_size=batch_size, seed=seed, exclude_rows=exclude_rows,
                         num_instances=2)


@SAMPLERS.register("continent")
class ContinentSampler(Sampler):
    """Continent-aware sampling with replacement (see the module docstring)."""

    def __init__(self, image_list: Any, *, batch_size: int, seed: int,
                 exclude_rows: np.ndarray | None = None,
                 continent_shares: Mapping[str, float] | None = None,
                 clean_fraction: float = CLEAN_FRACTION):
        super().__init__(image_list, batch_size=batch_size, seed=seed, exclude_rows=exclude_rows)
        shares = dict(CONTINENT_SHARES if continent_shares is None else continent_shares)
        if not 0.0 <= clean_fraction <= 1.0:
            raise ValueError(f"continent sampler: clean_fraction must lie in [0, 1], got "
                             f"{clean_fraction}")
        continents = np.asarray(image_list.continents)[self.rows]
        noisy = np.asarray(image_list.noisy, dtype=bool)[self.rows]
        unknown = sorted(set(np.unique(continents).tolist()) - set(shares))
        if unknown:
            raise ValueError(f"continent sampler: continents {unknown} have no share; known: "
                             f"{sorted(shares)}")
        present = [c for c in shares if np.any(continents == c) and shares[c] > 0]
        if not present:
            raise ValueError("continent sampler: no continent of the list has a share > 0")
        total = sum(shares[c] for c in present)
        self.shares = {c: shares[c] / total for c in present}
        counts = _largest_remainder([self.shares[c] * self.epoch_length for c in present])
        self.groups: list[tuple[np.ndarray, int]] = []   # (candidate rows, number of draws)
        for c, n in zip(present, counts, strict=True):
            clean = self.rows[(continents == c) & ~noisy]
            dirty = self.rows[(continents == c) & noisy]
            n_clean = int(round(clean_fraction * n))
            if len(dirty) == 0:
                n_clean = n
            elif len(clean) == 0:
                n_clean = 0
            self.groups += [(clean, n_clean), (dirty, n - n_clean)]
        self.groups = [(r, n) for r, n in self.groups if n > 0]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        draws = [rows[rng.integers(0, len(rows), n)] for rows, n in self.groups]
        return rng.permutation(np.concatenate(draws))


def _largest_remainder(quotas: list[float]) -> list[int]:
    """Integers summing to round(sum(quotas)), each floor(q) or floor(q) + 1."""
    floors = [int(np.floor(q)) for q in quotas]
    missing = int(round(sum(quotas))) - sum(floors)
    order = np.argsort([-(q - f) for q, f in zip(quotas, floors, strict=True)], kind="stable")
    for i in order[:missing]:
        floors[i] += 1
    return floors
