"""Samplers: determinism, exclusions, P x K structure, continent and clean/noisy shares."""

import types

import numpy as np
import pytest

from lmr_jax.data import samplers as S

CONTINENTS = np.array(["Asia", "Europe", "Africa", "North America", "South America",
                       "Antarctica", "Oceania", "OTHER"])


@pytest.fixture(scope="module")
def image_list():
    """6000 rows, 300 labels of 1..39 images, ~30% noisy, continents by label, some label -1."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 40, 300)
    labels = np.repeat(np.arange(300), sizes)[:6000]
    labels = np.concatenate([labels, np.full(6000 - len(labels), -1)])
    labels[rng.choice(6000, 50, replace=False)] = -1
    continent_of_label = CONTINENTS[CONTINENTS != "Oceania"][rng.integers(0, 7, 300)]
    continents = np.where(labels >= 0, continent_of_label[labels], "OTHER")
    continents[labels == 7] = "Oceania"     # label 7: the only Oceania images, all clean
    noisy = rng.random(6000) < 0.3
    noisy[labels == 7] = False
    return types.SimpleNamespace(labels=labels.astype(np.int32), noisy=noisy,
                                 continents=continents)


@pytest.mark.parametrize("name", S.SAMPLERS.names())
def test_epochs_are_deterministic_and_differ(image_list, name):
    make = lambda seed: S.SAMPLERS.build(name, image_list, batch_size=24, seed=seed)  # noqa: E731
    a, b = make(3), make(3)
    e0 = a.epoch_indices(0)
    assert len(e0) == a.epoch_length
    np.testing.assert_array_equal(e0, b.epoch_indices(0))
    np.testing.assert_array_equal(a.epoch_indices(5), b.epoch_indices(5))
    assert not np.array_equal(e0, a.epoch_indices(1))
    assert not np.array_equal(e0, make(4).epoch_indices(0))
    assert np.all(image_list.labels[e0] >= 0)


def test_softmax_is_a_permutation_without_excluded_rows(image_list):
    exclude = np.array([3, 10, 999])
    s = S.SAMPLERS.build("softmax", image_list, batch_size=8, seed=0, exclude_rows=exclude)
    expected = np.setdiff1d(np.flatnonzero(image_list.labels >= 0), exclude)
    e = s.epoch_indices(2)
    np.testing.assert_array_equal(np.sort(e), expected)
    assert not np.array_equal(e, expected)          # actually shuffled


def test_pk_batches_hold_p_identities_of_k_images(image_list):
    k, batch = 4, 32
    s = S.SAMPLERS.build("pk", image_list, batch_size=batch, seed=1, num_instances=k,
                         exclude_rows=np.array([0, 1]))
    e = s.epoch_indices(0)
    n_eligible = np.sum(image_list.labels >= 0) - np.sum(image_list.labels[[0, 1]] >= 0)
    assert len(e) == (n_eligible // batch) * batch
    assert not np.isin([0, 1], e).any()
    counts_per_label = np.bincount(image_list.labels[image_list.labels >= 0])
    seen = np.zeros(300, int)
    for b in e.reshape(-1, batch):
        groups = image_list.labels[b].reshape(batch // k, k)
        assert np.all(groups == groups[:, :1])                       # K images per identity
        ids = groups[:, 0]
        assert len(np.unique(ids)) == batch // k                     # P distinct identities
        for ident, rows in zip(ids, b.reshape(batch // k, k), strict=True):
            if counts_per_label[ident] >= k + 2:                     # +2: rows 0, 1 excluded
                assert len(np.unique(rows)) == k                     # without replacement
        seen[ids] += 1
    # Identity-uniform: every identity is used about equally often (successive permutations,
    # each cut to a multiple of P; independent draws would spread the counts by about +-5).
    present = seen[s.identities]
    assert present.min() >= 4 and present.max() - present.min() <= 2


def test_pk_rejects_bad_batch_shapes(image_list):
    with pytest.raises(ValueError, match="multiple of num_instances"):
        S.SAMPLERS.build("pk", image_list, batch_size=30, seed=0, num_instances=4)
    with pytest.raises(ValueError, match="identities cannot fill"):
        S.SAMPLERS.build("pk", image_list, batch_size=4 * 400, seed=0, num_instances=4)


def test_continent_shares_and_clean_noisy_split(image_list):
    s = S.SAMPLERS.build("continent", image_list, batch_size=24, seed=2)
    rows = np.flatnonzero(image_list.labels >= 0)
    e = s.epoch_indices(0)
    assert len(e) == len(rows)
    present = [c for c in S.CONTINENT_SHARES if np.any(image_list.continents[rows] == c)]
    total = sum(S.CONTINENT_SHARES[c] for c in present)
    drawn_continent = image_list.continents[e]
    for c in present:
        n_c = np.sum(drawn_continent == c)
        assert abs(n_c - S.CONTINENT_SHARES[c] / total * len(rows)) <= 1, c
        in_c = e[drawn_continent == c]
        n_noisy = np.sum(image_list.noisy[in_c])
        if c == "Oceania":
            assert n_noisy == 0                       # no noisy images there: all clean
        else:
            assert abs((n_c - n_noisy) - 0.66 * n_c) <= 1, c
    # With replacement: Asia draws 50% of the epoch from far fewer images.
    asia = e[drawn_continent == "Asia"]
    assert len(np.unique(asia)) < len(asia)
    # Shuffled: the first 200 draws mix continents.
    assert len(np.unique(drawn_continent[:200])) >= 4


def test_continent_renormalises_over_present_continents():
    lst = types.SimpleNamespace(
        labels=np.arange(1000) % 10, noisy=np.zeros(1000, bool),
        continents=np.where(np.arange(1000) < 500, "Europe", "Oceania"))
    s = S.SAMPLERS.build("continent", lst, batch_size=8, seed=0)
    assert s.shares == pytest.approx({"Europe": 0.2 / 0.21, "Oceania": 0.01 / 0.21})
    e = s.epoch_indices(0)
    assert abs(np.sum(lst.continents[e] == "Oceania") - 1000 * 0.01 / 0.21) <= 1


def test_continent_rejects_unknown_continents():
    lst = types.SimpleNamespace(labels=np.zeros(4, int), noisy=np.zeros(4, bool),
                                continents=np.array(["Asia", "Atlantis", "Asia", "Asia"]))
    with pytest.raises(ValueError, match="Atlantis"):
        S.SAMPLERS.build("continent", lst, batch_size=2, seed=0)


def test_registry_and_bad_inputs(image_list):
    with pytest.raises(ValueError, match="unknown sampler 'uniform'"):
        S.SAMPLERS.build("uniform", image_list, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="exclude_rows"):
        S.SAMPLERS.build("softmax", image_list, batch_size=8, seed=0, exclude_rows=[6000])
    empty = types.SimpleNamespace(labels=np.full(5, -1), noisy=np.zeros(5, bool),
                                  continents=np.full(5, "Asia"))
    with pytest.raises(ValueError, match="no row with a label"):
        S.SAMPLERS.build("softmax", empty, batch_size=8, seed=0)


def test_the_selected_sampler_gets_its_config_sub_dict(image_list):
    from lmr_jax.data.pipeline import default_train_config

    cfg = default_train_config().sampler
    cfg.name = "pk"
    cfg.pk.num_instances = 6
    s = S.SAMPLERS.build_selected(cfg, image_list, batch_size=24, seed=0)
    assert isinstance(s, S.PKSampler) and s.num_instances == 6
    cfg.name = "continent"
    cfg.continent.clean_fraction = 1.0
    s = S.SAMPLERS.build_selected(cfg, image_list, batch_size=24, seed=0)
    assert isinstance(s, S.ContinentSampler) and not image_list.noisy[s.epoch_indices(0)].any()
    cfg.pk.num_instance = 3  # a mistyped option is an error naming it, not ignored
    cfg.name = "pk"
    with pytest.raises(ValueError, match=r"sampler 'pk' does not take \['num_instance'\]"):
        S.SAMPLERS.build_selected(cfg, image_list, batch_size=24, seed=0)
