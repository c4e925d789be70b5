"""The MACE model (paper eq. 8-13) and its derivatives: forces and stress.

    h⁰ = W_embed[z]                          (element embedding)
    for t = 1..T:
        A = Interaction(h, edges)            (eq. 8-9)
        h = Product(A) [+ SelfConnection(h)] (eq. 10-12)
        E_i += Readout_t(h)                  (eq. 13)
    E = Σ_i [E0(z_i) + scale · (E_i + E_ZBL,i) + shift]

Forces, stress and virials come from the energy in one place, :mod:`openmace.model.derivatives`.
Fast implementations of the message and contraction operators are swapped in by
:func:`openmace.accel.for_inference`; this module holds the reference maths only.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.data.graph import Graph, paired_edges
from openmace.model.config import MACEConfig
from openmace.model.derivatives import apply_strain, energy_derivatives
from openmace.model.interaction import InteractionBlock
from openmace.model.product import ProductBlock
from openmace.model.radial import RadialEmbedding, ZBLRepulsion
from openmace.model.readout import Readout
from openmace.o3 import Irrep, SphericalHarmonics, element_groups, spherical_harmonics_irreps


def _a_feature_irreps(config: MACEConfig, first: bool) -> tuple[Irrep, ...]:
    """Irreps of the A-features: the spherical harmonics' irreps, both parities for every l
    after the first layer when the hidden features contain odd scalars (as mace-torch)."""
    sh = spherical_harmonics_irreps(config.max_ell)
    if first or Irrep(0, -1) not in config.features.irreps:
        return tuple(sh)
    both = [Irrep(l, p) for l in range(config.max_ell + 1) for p in (-1, 1)]
    return tuple(both)


class MACE(nn.Module):
    """The MACE model: energies of atomic structures and their derivatives.

    Args:
        config: every hyperparameter (:class:`MACEConfig`: elements and E0s, cutoff, radial
            basis, irreps, correlation order, layers, MLP sizes, normalisation).
        dtype: dtype of parameters and buffers (default: PyTorch's default dtype). Random
            initial weights are drawn in this dtype.
        device: where the model lives (default CPU). Initial weights are drawn on the CPU, so
            a seed gives the same model on every device.

    Call it on a :class:`openmace.data.graph.Graph` (:meth:`forward`) or on plain tensors
    (:meth:`compute`). For inference (calculators, MD, evaluation) use the frozen copy of
    :func:`openmace.accel.for_inference`, which runs the fast operators.
    """

    def __init__(
        self,
        config: MACEConfig,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.config = config
        features = config.features
        c = features.channels
        num_elements = len(config.atomic_numbers)
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(config.atomic_numbers)] = torch.arange(num_elements)
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        self.register_buffer("atomic_energies", torch.tensor(config.atomic_energies, dtype=dtype))
        self.num_elements = num_elements
        self.embedding = nn.Parameter(torch.randn(num_elements, c, dtype=dtype))
        self.radial = RadialEmbedding(
            config.r_max, config.num_bessel, config.num_polynomial_cutoff, dtype
        )
        self.pair_repulsion = (
            ZBLRepulsion(config.num_polynomial_cutoff, dtype=dtype)
            if config.pair_repulsion
            else None
        )
        self.irreps_sh = tuple(spherical_harmonics_irreps(config.max_ell))
        self.spherical_harmonics = SphericalHarmonics(config.max_ell)
        self.scale, self.shift = float(config.scale), float(config.shift)

        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps_in: tuple[Irrep, ...] = (Irrep(0, 1),)
        for t, correlation in enumerate(config.correlations):
            first, last = t == 0, t == config.num_interactions - 1
            irreps_out = features.scalars().irreps if last else features.irreps
            irreps_a = _a_feature_irreps(config, first)
            residual = config.residual_first or not first
            self.interactions.append(
                InteractionBlock(
                    irreps_in=irreps_in,
                    irreps_sh=self.irreps_sh,
                    irreps_target=irreps_a,
                    irreps_skip_out=irreps_out,
                    channels=c,
                    num_radial=config.num_bessel,
                    radial_mlp=config.radial_mlp,
                    num_elements=num_elements,
                    avg_num_neighbors=config.avg_num_neighbors,
                    residual=residual,
                    dtype=dtype,
                )
            )
            self.products.append(
                ProductBlock(irreps_a, irreps_out, c, correlation, num_elements, dtype)
            )
            mlp_readout = last and config.num_interactions > 1
            hidden = config.readout_mlp if mlp_readout else []
            self.readouts.append(Readout(irreps_out, c, hidden, dtype))
            irreps_in = irreps_out
        if device is not None:
            self.to(device)

    def species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Element index of each atom; clear error for elements the model does not know."""
        index = self.z_to_index[atomic_numbers.clamp(0, 118)]
        if bool((index < 0).any()) or bool((atomic_numbers > 118).any()):
            if torch.jit.is_scripting():
                raise ValueError("atomic number(s) not in this model's elements")
            else:
                self._unknown_elements(atomic_numbers, index)
        return index

    @torch.jit.unused
    def _unknown_elements(self, atomic_numbers: torch.Tensor, index: torch.Tensor) -> None:
        unknown = sorted(set(atomic_numbers[(index < 0) | (atomic_numbers > 118)].tolist()))
        raise ValueError(
            f"atomic number(s) {unknown} not in this model's elements {self.config.atomic_numbers}"
        )

    def working_memory(self, num_atoms: int, num_edges: int) -> int:
        """Bytes one evaluation (energy and forces) of ``num_atoms`` atoms and ``num_edges``
        edges needs beyond the model itself, as reported by each block (an estimate with a
        safety margin; see :mod:`openmace.memory`)."""
        itemsize = self.atomic_energies.element_size()
        total = num_edges * GRAPH_NUMBERS_PER_EDGE * itemsize
        for interaction, product in zip(self.interactions, self.products):
            total += interaction.working_memory(num_atoms, num_edges, itemsize)
            total += product.working_memory(num_atoms, itemsize)
        return int(total)

    @torch.jit.unused
    def forward(
        self,
        graph: Graph,
        *,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies (eV), per-atom energies including E0 (eV), forces (eV/Å) and, on request,
        virials (eV, ``-∂E/∂ε``) and stress (eV/Å³, ``(1/V) ∂E/∂ε``; zero for structures that
        are not periodic in all three directions) of every graph in the batch.
        ``create_graph=True`` keeps forces and stress differentiable (training on forces)."""
        graph = graph.to(device=self.atomic_energies.device, dtype=self.atomic_energies.dtype)
        return self.compute(
            graph.positions,
            graph.atomic_numbers,
            graph.cell,
            graph.pbc,
            graph.edge_index,
            graph.unit_shifts,
            graph.batch,
            graph.num_graphs,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=create_graph,
        )

    @torch.jit.unused
    def compute(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        unit_shifts: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        *,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` on plain tensors (the fields of :class:`Graph`, already on the
        model's device and dtype)."""
        return self.compute_positional(
            positions,
            atomic_numbers,
            cell,
            pbc,
            edge_index,
            unit_shifts,
            batch,
            num_graphs,
            compute_forces,
            compute_stress,
            create_graph,
        )

    @torch.jit.export
    def compute_positional(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        unit_shifts: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        compute_forces: bool,
        compute_stress: bool,
        create_graph: bool,
    ) -> dict[str, torch.Tensor]:
        """:meth:`compute` with positional arguments: the TorchScript entry point (TorchScript
        has no keyword-only arguments)."""
        strained = apply_strain(positions, cell, batch, num_graphs, compute_forces, compute_stress)
        energy, node_energy = self.energy(
            strained.positions,
            atomic_numbers,
            strained.cell,
            edge_index,
            unit_shifts,
            batch,
            num_graphs,
        )
        out = {"energy": energy, "node_energy": node_energy}
        out.update(
            energy_derivatives(energy, strained, pbc, compute_forces, compute_stress, create_graph)
        )
        return out

    def energy(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        edge_index: torch.Tensor,
        unit_shifts: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies ``[G]`` and per-atom energies with E0 ``[n]`` (eV): eq. 8-13."""
        species = self.species(atomic_numbers)
        groups = element_groups(species, self.num_elements)
        sender, receiver = edge_index[0], edge_index[1]
        shifts = torch.einsum("ei,eij->ej", unit_shifts, cell[batch[sender]])
        vectors = positions[receiver] - positions[sender] + shifts
        lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        sh = self.spherical_harmonics(vectors)
        # an edge and its reverse have the same length: radial features (and the radial MLPs of
        # the interactions) once per pair when the edges come in reversed halves
        pairs = paired_edges(edge_index, unit_shifts)
        radial = self.radial(lengths[:pairs] if pairs > 0 else lengths)

        num_atoms = positions.shape[0]
        site = positions.new_zeros(num_atoms)
        if self.pair_repulsion is not None:
            site = site + self.pair_repulsion(
                lengths, atomic_numbers[sender], atomic_numbers[receiver], num_atoms, receiver
            )
        h = (self.embedding * self.num_elements**-0.5)[species].unsqueeze(-1)
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            a, residual = interaction(h, groups, sh, radial, sender, receiver)
            h = product(a, groups, residual)
            site = site + readout(h)

        # the reference energies E0 (large: ~1e3 eV per atom) and the learned part are summed
        # separately: summed together, float32 rounds every atom's learned energy at the
        # magnitude of the running total, configuration-dependent noise of ~0.1 meV/atom that
        # the energy loss then fits (measured on rMD17 aspirin); separately, the E0 rounding is
        # a constant per composition
        e0 = self.atomic_energies[species]
        learned = self.scale * site + self.shift
        energy = positions.new_zeros(num_graphs).index_add(0, batch, e0)
        energy = energy + positions.new_zeros(num_graphs).index_add(0, batch, learned)
        return energy, e0 + learned


# per edge, numbers every implementation holds: the graph, edge vectors, lengths, harmonics and
# their autograd records (calibrated with the compiled kernels' estimate, openmace.accel)
GRAPH_NUMBERS_PER_EDGE = 350 * 1.5
