"""The layers' random initialisers (lmr_jax.models.layers.normal_init / uniform_init).

They draw fixed-size blocks so that building a model compiles one program for all weight
shapes; checked here: the distributions (moments against the closed forms, bounds), that a
traced draw (nnx.jit) equals the eager one up to float32 rounding (XLA compiles the draw inside
the traced program), block boundaries included, that blocks do not repeat, and that new shapes
compile nothing.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from flax import nnx

from lmr_jax.models.layers import INIT_BLOCK, Conv2d, Linear, normal_init, uniform_init


def test_normal_init_moments():
    w = np.asarray(normal_init(nnx.Rngs(0), (3 * INIT_BLOCK + 17,), 0.05))
    assert w.dtype == np.float32
    assert abs(w.mean()) < 4 * 0.05 / np.sqrt(w.size)
    assert abs(w.std() / 0.05 - 1) < 0.01
    # standard-normal tails: P(|z| > 3) = 0.27 %
    assert abs(np.mean(np.abs(w) > 3 * 0.05) - 0.0027) < 0.0006


def test_uniform_init_bounds_and_moments():
    bound = 0.3
    w = np.asarray(uniform_init(nnx.Rngs(1), (700, 500), bound))
    assert w.shape == (700, 500) and w.dtype == np.float32
    assert w.min() >= -bound and w.max() < bound
    assert w.max() > 0.999 * bound and w.min() < -0.999 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.005 * bound
    assert abs(w.mean()) < 4 * bound / np.sqrt(3 * w.size)


def test_layers_use_pytorchs_init_scales():
    conv = Conv2d(64, 256, 3, rngs=nnx.Rngs(2))
    k = np.asarray(conv.kernel[...])
    assert k.shape == (3, 3, 64, 256)
    assert abs(k.std() / np.sqrt(2.0 / (256 * 9)) - 1) < 0.01  # Kaiming normal, fan_out
    lin = Linear(400, 300, rngs=nnx.Rngs(3))
    bound = 1 / np.sqrt(400)
    for w in (np.asarray(lin.kernel[...]), np.asarray(lin.bias[...])):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound


@pytest.mark.parametrize("shape", [(5,), (INIT_BLOCK,), (2, INIT_BLOCK + 3), (3, 3, 7, 11),
                                   (4, 0)])
def test_traced_draw_equals_eager(shape):
    # atol: a few float32 ulps of 0.2, where scale * u + offset cancels for the uniform draws
    want_n = np.asarray(normal_init(nnx.Rngs(7), shape, 0.1))
    want_u = np.asarray(uniform_init(nnx.Rngs(7), shape, 0.2))
    got_n, got_u = nnx.jit(lambda r: (normal_init(r, shape, 0.1),
                                     uniform_init(r, shape, 0.2)))(nnx.Rngs(7))
    np.testing.assert_allclose(np.asarray(got_n), want_n, rtol=1e-6, atol=1e-7)
    # the second draw of the traced Rngs is its second key: compare with the eager second draw
    rngs = nnx.Rngs(7)
    normal_init(rngs, shape, 0.1)
    np.testing.assert_allclose(np.asarray(got_u), np.asarray(uniform_init(rngs, shape, 0.2)),
                               rtol=1e-6, atol=1e-7)
    assert want_n.shape == np.asarray(got_u).shape == shape
    if want_u.size:
        assert not np.allclose(want_u, np.asarray(got_u))  # the streams advanced


def test_blocks_are_independent_draws():
    w = np.asarray(normal_init(nnx.Rngs(0), (3, INIT_BLOCK), 1.0))
    assert not np.array_equal(w[0], w[1]) and not np.array_equal(w[1], w[2])
    assert abs(np.corrcoef(w[0], w[1])[0, 1]) < 0.02


def test_new_shapes_compile_nothing(caplog):
    normal_init(nnx.Rngs(0), (3, 3), 1.0)  # the block programs compiled (once per process)
    uniform_init(nnx.Rngs(0), (3, 3), 1.0)
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        for shape in [(1, 1, 17, 29), (7, 7, 3, 61), (INIT_BLOCK + 11,)]:
            normal_init(nnx.Rngs(5), shape, 0.5)
            uniform_init(nnx.Rngs(5), shape, 0.5)
    compiled = [r.getMessage() for r in caplog.records
                if "Finished XLA compilation" in r.getMessage()]
    assert compiled == [], compiled
