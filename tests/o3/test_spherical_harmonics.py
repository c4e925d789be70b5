"""Spherical harmonics of edges in reversed halves: the second half by parity equals the
harmonics computed directly, values and gradients."""

from __future__ import annotations

import torch

from openmace.o3.spherical_harmonics import SphericalHarmonics


def test_second_half_by_parity_equals_direct_harmonics():
    torch.manual_seed(0)
    sh = SphericalHarmonics(4, dtype=torch.float64)
    half = torch.randn(13, 3, dtype=torch.float64)
    vectors = torch.cat([half, -half]).requires_grad_(True)
    direct = sh(vectors)
    paired = sh(vectors, pairs=13)
    torch.testing.assert_close(paired, direct, rtol=0, atol=1e-15)
    # odd l changes sign: the parity really was applied (not a copy of the first half)
    assert (paired[13:, 1:4] + paired[:13, 1:4]).abs().max() < 1e-15
    assert paired[:13, 1:4].abs().max() > 0.1
    weight = torch.randn(direct.shape, dtype=torch.float64)
    (grad_direct,) = torch.autograd.grad((direct * weight).sum(), vectors)
    (grad_paired,) = torch.autograd.grad((paired * weight).sum(), vectors)
    # the paired form differentiates through the first half's vectors, which carry both
    # halves' dependence (the second half is their negation in the model)
    folded = grad_direct[:13] - grad_direct[13:]
    torch.testing.assert_close(grad_paired[:13], folded, rtol=0, atol=1e-13)
    assert not grad_paired[13:].any()


def test_pairs_then_one_way_vectors_equal_direct_harmonics():
    """A LAMMPS domain's layout: P pairs, their reverses, then vectors that come once."""
    torch.manual_seed(1)
    sh = SphericalHarmonics(3, dtype=torch.float64)
    half, rest = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    vectors = torch.cat([half, -half, rest])
    torch.testing.assert_close(sh(vectors, pairs=5), sh(vectors), rtol=0, atol=1e-15)


def test_more_pairs_than_vectors_allow_is_the_direct_evaluation():
    sh = SphericalHarmonics(2, dtype=torch.float64)
    vectors = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(sh(vectors, pairs=4), sh(vectors), rtol=0, atol=0)
