"""The MACE model (paper eq. 8-13) and its derivatives: forces and stress.

    h⁰ = W_embed[z]                          (element embedding)
    for t = 1..T:
        A = Interaction(h, edges)            (eq. 8-9)
        h = Product(A) [+ SelfConnection(h)] (eq. 10-12)
        E_i += Readout_t(h)                  (eq. 13)
    E = Σ_i [E0(z_i) + scale · (E_i + E_ZBL,i) + shift]

Forces are ``-∂E/∂r`` and the stress is ``(1/V) ∂E/∂ε`` for a symmetric strain ``ε`` of positions
and cell (ASE's sign convention), both by automatic differentiation.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.data.graph import Graph, paired_edges
from openmace.model.config import MACEConfig
from openmace.model.interaction import InteractionBlock
from openmace.model.memory import check_memory
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
    def __init__(self, config: MACEConfig) -> None:
        super().__init__()
        self.config = config
        features = config.features
        c = features.channels
        num_elements = len(config.atomic_numbers)
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(config.atomic_numbers)] = torch.arange(num_elements)
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        self.register_buffer(
            "atomic_energies",
            torch.tensor(config.atomic_energies, dtype=torch.get_default_dtype()),
        )
        self.num_elements = num_elements
        self.embedding = nn.Parameter(torch.randn(num_elements, c))
        self.radial = RadialEmbedding(config.r_max, config.num_bessel, config.num_polynomial_cutoff)
        self.pair_repulsion = (
            ZBLRepulsion(config.num_polynomial_cutoff) if config.pair_repulsion else None
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
                )
            )
            self.products.append(ProductBlock(irreps_a, irreps_out, c, correlation, num_elements))
            mlp_readout = last and config.num_interactions > 1
            self.readouts.append(Readout(irreps_out, c, config.readout_mlp if mlp_readout else []))
            irreps_in = irreps_out

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

    @torch.jit.unused
    def forward(
        self,
        graph: Graph,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies (eV), per-atom energies including E0 (eV), forces (eV/Å) and, on request,
        virials (eV, ``-∂E/∂ε``) and stress (eV/Å³, ``(1/V) ∂E/∂ε``; zero for structures that
        are not periodic in all three directions) of every graph in the batch."""
        graph = graph.to(device=self.atomic_energies.device, dtype=self.atomic_energies.dtype)
        check_memory(
            self,
            graph.positions.shape[0],
            graph.edge_index.shape[1],
            graph.positions.element_size(),
        )
        return self.compute(
            graph.positions,
            graph.atomic_numbers,
            graph.cell,
            graph.pbc,
            graph.edge_index,
            graph.unit_shifts,
            graph.batch,
            graph.num_graphs,
            compute_forces,
            compute_stress,
            training,
        )

    @torch.jit.export
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
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` on plain tensors (the fields of :class:`Graph`, already on the
        model's device and dtype); the entry point of the TorchScript export."""
        species = self.species(atomic_numbers)
        groups = element_groups(species, self.num_elements)
        leaf, unstrained_cell = positions.detach(), cell
        strain: torch.Tensor | None = None
        if compute_forces or compute_stress:
            leaf.requires_grad_(True)
        positions = leaf
        if compute_stress:
            strain = torch.zeros(
                (num_graphs, 3, 3), dtype=positions.dtype, device=positions.device
            ).requires_grad_(True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("ni,nij->nj", positions, symmetric[batch])
            cell = cell + torch.bmm(cell, symmetric)

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
        node_energy = e0 + learned
        out = {"energy": energy, "node_energy": node_energy}
        if compute_forces or compute_stress:
            inputs = [leaf]
            if strain is not None:
                inputs.append(strain)
            grads = torch.autograd.grad(
                [energy.sum()], inputs, create_graph=training, allow_unused=True
            )
            force_grad = grads[0]
            out["forces"] = -force_grad if force_grad is not None else torch.zeros_like(leaf)
            if strain is not None:
                strain_grad = grads[1]
                de_dstrain = strain_grad if strain_grad is not None else torch.zeros_like(strain)
                periodic = pbc.all(dim=1)
                volume = torch.linalg.det(unstrained_cell).abs()
                volume = torch.where(periodic, volume, torch.ones_like(volume))
                out["virials"] = -de_dstrain
                # stress is defined for fully periodic structures only; zero elsewhere
                out["stress"] = torch.where(
                    periodic.view(-1, 1, 1),
                    de_dstrain / volume.view(-1, 1, 1),
                    torch.zeros_like(de_dstrain),
                )
        return out
