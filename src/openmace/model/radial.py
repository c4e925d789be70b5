"""Edge embedding: Bessel basis, polynomial cutoff, radial MLP and ZBL repulsion (paper A.5)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from ase.data import covalent_radii
from torch import nn


class BesselBasis(nn.Module):
    """``sqrt(2 / r_max) · sin(k_n r) / r`` with ``k_n = n π / r_max``, ``n = 1..num_basis``."""

    def __init__(self, r_max: float, num_basis: int = 8, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.r_max = r_max
        frequencies = math.pi / r_max * torch.arange(1, num_basis + 1, dtype=torch.float64)
        self.register_buffer("frequencies", frequencies.to(dtype or torch.get_default_dtype()))
        self.prefactor = (2.0 / r_max) ** 0.5

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # [e, 1] -> [e, num_basis]
        return self.prefactor * torch.sin(self.frequencies * r) / r


def polynomial_cutoff(x: torch.Tensor, p: int) -> torch.Tensor:
    """Smooth envelope ``f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` of
    ``x = r / r_max``: value and first two derivatives vanish at ``x = 1``; zero beyond."""
    f = (
        1.0
        - 0.5 * (p + 1.0) * (p + 2.0) * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - 0.5 * p * (p + 1.0) * x ** (p + 2)
    )
    return f * (x < 1.0)


def _second_moment_normalisation(values: np.ndarray, weights: np.ndarray) -> float:
    return float(1.0 / np.sqrt((weights * values**2).sum() / np.sqrt(2.0 * np.pi)))


@cache
def silu_normalisation() -> float:
    """``1 / sqrt(E[silu(z)^2])`` for ``z ~ N(0, 1)``, by 200-point Gauss-Hermite quadrature
    (exact to float64 precision). Rescaled SiLU keeps unit second moment through the MLPs."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    return _second_moment_normalisation(z / (1.0 + np.exp(-z)), w)


@cache
def sigmoid_normalisation() -> float:
    """``1 / sqrt(E[sigmoid(z)^2])`` for ``z ~ N(0, 1)`` (as :func:`silu_normalisation`): the
    gates of the gated non-linearity."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    return _second_moment_normalisation(1.0 / (1.0 + np.exp(-z)), w)


class NormalizedSiLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = silu_normalisation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class MLP(nn.Module):
    """Bias-free MLP ``x → x W / sqrt(fan_in) → SiLU → ...``; no activation after the last."""

    def __init__(self, sizes: list[int], dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(a, b, dtype=dtype)) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.act = NormalizedSiLU()
        self.num_layers = len(sizes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.num_layers - 1
        for i, w in enumerate(self.weights):
            x = x @ (w * w.shape[0] ** -0.5)
            if i < last:
                x = self.act(x)
        return x


class RadialEmbedding(nn.Module):
    """Bessel features times the polynomial cutoff: ``[e, 1] → [e, num_bessel]``."""

    def __init__(
        self, r_max: float, num_bessel: int, p: int, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.r_max, self.p = r_max, p
        self.bessel = BesselBasis(r_max, num_bessel, dtype)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bessel(r) * polynomial_cutoff(r / self.r_max, self.p)


class ZBLRepulsion(nn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion, switched off smoothly at the sum of
    covalent radii with the polynomial cutoff. Returns per-atom energies (eV), half of each
    pair energy on the receiving atom (edges come in both directions).

    The screening length is ``a = a_prefactor · 0.529 Å / (Z_i^a_exp + Z_j^a_exp)``. ``a_exp``
    and ``a_prefactor`` are buffers of the state dict (as in mace-torch, which may store them
    rounded to float32 or trained), so a converted or saved model keeps their exact values.
    """

    def __init__(
        self,
        p: int,
        a_exp: float = 0.300,
        a_prefactor: float = 0.4543,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.p = p
        # universal screening function: Σ_k c_k exp(-d_k x)
        self.screening = [(0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016)]
        self.register_buffer("a_exp", torch.tensor(a_exp, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(a_prefactor, dtype=dtype))
        self.register_buffer(
            "covalent_radii", torch.tensor(covalent_radii, dtype=dtype), persistent=False
        )

    def forward(
        self,
        r: torch.Tensor,
        z_sender: torch.Tensor,
        z_receiver: torch.Tensor,
        num_atoms: int,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        zs, zr = z_sender.unsqueeze(-1), z_receiver.unsqueeze(-1)
        # charges in the model's dtype (a Python float times an int tensor would take the
        # global default dtype and lose precision in float64 models)
        qs, qr = zs.to(r.dtype), zr.to(r.dtype)
        a = self.a_prefactor * 0.529 / (qs**self.a_exp + qr**self.a_exp)
        x = r / a
        phi = torch.zeros_like(x)
        for c, d in self.screening:
            phi = phi + c * torch.exp(-d * x)
        pair = 14.3996 * qs * qr / r * phi
        r_switch = self.covalent_radii[zs] + self.covalent_radii[zr]
        pair = 0.5 * pair * polynomial_cutoff(r / r_switch, self.p)
        out = r.new_zeros(num_atoms)
        return out.index_add(0, receiver, pair.squeeze(-1))


class AgnesiTransform(nn.Module):
    """Agnesi transform of the edge length (ACEpotentials.jl, J. Chem. Phys. 159, 164101):

        T(r) = 1 / (1 + a x^q / (1 + x^(q - p))),   x = r / r0,   r0 = (R_i + R_j) / 2

    with ``R`` the covalent radii (ASE). ``q``, ``p``, ``a`` are buffers (mace-torch's
    ``AgnesiTransform``; its defaults 0.9183, 4.5791, 1.0805)."""

    def __init__(
        self,
        q: float = 0.9183,
        p: float = 4.5791,
        a: float = 1.0805,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("q", torch.tensor(q, dtype=dtype))
        self.register_buffer("p", torch.tensor(p, dtype=dtype))
        self.register_buffer("a", torch.tensor(a, dtype=dtype))
        self.register_buffer(
            "covalent_radii", torch.tensor(covalent_radii, dtype=dtype), persistent=False
        )

    def forward(self, r: torch.Tensor, z_sender: torch.Tensor, z_receiver: torch.Tensor):
        r0 = 0.5 * (self.covalent_radii[z_sender] + self.covalent_radii[z_receiver]).unsqueeze(-1)
        x = r / r0
        return 1.0 / (1.0 + self.a * x**self.q / (1.0 + x ** (self.q - self.p)))


class SoftTransform(nn.Module):
    """Soft transform of the edge length (mace-torch's ``SoftTransform``): with
    ``r0 = R_i + R_j`` (covalent radii), ``p0 = 3 r0 / 4``, ``p1 = 4 r0 / 3``,
    ``m = (p0 + p1) / 2``:

        T(r) = p0 + (r - p0) · (1 + tanh(α (r - m) / (p1 - p0))) / 2

    close to ``p0`` for short distances and to ``r`` beyond ``p1``. ``alpha`` is a buffer."""

    def __init__(self, alpha: float = 4.0, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("alpha", torch.tensor(alpha, dtype=dtype))
        self.register_buffer(
            "covalent_radii", torch.tensor(covalent_radii, dtype=dtype), persistent=False
        )

    def forward(self, r: torch.Tensor, z_sender: torch.Tensor, z_receiver: torch.Tensor):
        r0 = (self.covalent_radii[z_sender] + self.covalent_radii[z_receiver]).unsqueeze(-1)
        p0, p1 = 0.75 * r0, (4.0 / 3.0) * r0
        m = 0.5 * (p0 + p1)
        switch = 0.5 * (1.0 + torch.tanh(self.alpha / (p1 - p0) * (r - m)))
        return p0 + (r - p0) * switch


def distance_transform(name: str | None, dtype: torch.dtype | None = None) -> nn.Module | None:
    """The transform module of ``MACEConfig.distance_transform`` (None: no transform)."""
    if name is None:
        return None
    return {"agnesi": AgnesiTransform, "soft": SoftTransform}[name](dtype=dtype)


class _Layer(nn.Module):
    """``x W + b``, then (hidden layers) LayerNorm and SiLU."""

    def __init__(self, a: int, b: int, hidden: bool, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(a, b, dtype=dtype) * a**-0.5)
        self.bias = nn.Parameter(torch.zeros(b, dtype=dtype))
        self.hidden = hidden
        self.norm_weight = nn.Parameter(torch.ones(b, dtype=dtype)) if hidden else None
        self.norm_bias = nn.Parameter(torch.zeros(b, dtype=dtype)) if hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addmm(self.bias, x, self.weight)
        weight, bias = self.norm_weight, self.norm_bias
        if weight is not None and bias is not None:
            x = torch.nn.functional.layer_norm(x, (weight.shape[0],), weight, bias, 1e-5)
            x = torch.nn.functional.silu(x)
        return x


class LayerNormMLP(nn.Module):
    """``Linear(+bias) → LayerNorm → SiLU → ... → Linear(+bias)`` (plain SiLU, no
    normalisation; weights ``[in, out]``, used as ``x W + b``): the radial MLP of the nonlinear
    interaction (mace-torch's ``RadialMLP``, after ESEN). LayerNorm ε = 1e-5, with affine
    weight and bias."""

    def __init__(self, sizes: list[int], dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.sizes = list(sizes)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        self.layers = nn.ModuleList(
            [_Layer(a, b, i < len(pairs) - 1, dtype) for i, (a, b) in enumerate(pairs)]
        )
        self.num_layers = len(pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
