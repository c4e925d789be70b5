"""The MACE model (paper eq. 8-13) and its derivatives: forces and stress.

    h⁰ = W_embed[z]                          (element embedding)
    for t = 1..T:
        A = Interaction(h, edges)            (eq. 8-9)
        h = Product(A) [+ SelfConnection(h)] (eq. 10-12)
        E_i += Readout_t(h)                  (eq. 13)
    E = Σ_i [E0(z_i) + scale · (E_i + E_ZBL,i) + shift]

Options of the released foundation models (``MACEConfig``): the interaction kind of each layer
(:mod:`openmace.model.interaction`), a distance transform before the radial basis, the cutoff
envelope on the radial MLP's output (``apply_cutoff=False``), edge irreps, an element-agnostic
product, a biased last readout, several heads (E0, scale, shift and readouts per head; a graph
selects its head) and an embedding of per-structure total charge and spin added to h⁰ (with an
optional linear energy readout of it, added to E0 unscaled).

Forces, stress and virials come from the energy in one place, :mod:`openmace.model.derivatives`.
Fast implementations of the message and contraction operators are swapped in by
:func:`openmace.accel.for_inference`; this module holds the reference maths only.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.data.graph import Graph, paired_edges, radial_rows
from openmace.model.config import MACEConfig
from openmace.model.derivatives import apply_strain, energy_derivatives
from openmace.model.halo import HaloExchange
from openmace.model.interaction import InteractionBlock
from openmace.model.product import ProductBlock
from openmace.model.radial import (
    RadialEmbedding,
    ZBLRepulsion,
    distance_transform,
    polynomial_cutoff,
)
from openmace.model.readout import Readout
from openmace.o3 import (
    ElementGroups,
    FeatureIrreps,
    Irrep,
    SphericalHarmonics,
    element_groups,
    spherical_harmonics_irreps,
)


class JointEmbedding(nn.Module):
    """Embedding of per-structure inputs (``MACEConfig.embedding_specs``: total charge, spin
    multiplicity) added to h⁰: one table per input, indexed by ``value + offset``, the rows
    concatenated, then ``SiLU(concat · W)`` (mace-torch's ``GenericJointEmbedding``; plain SiLU,
    no bias)."""

    def __init__(self, specs: dict, channels: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.names = list(specs)
        self.offsets = [int(specs[n].get("offset", 0)) for n in self.names]
        self.tables = nn.ParameterList(
            [
                nn.Parameter(
                    torch.randn(int(specs[n]["num_classes"]), int(specs[n]["emb_dim"]), dtype=dtype)
                )
                for n in self.names
            ]
        )
        total = sum(int(specs[n]["emb_dim"]) for n in self.names)
        self.projection = nn.Parameter(torch.randn(total, channels, dtype=dtype) * total**-0.5)

    def forward(self, inputs: list[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """``inputs``: one ``[graphs]`` tensor per name → ``[atoms, channels]``."""
        rows = []
        for k, table in enumerate(self.tables):
            index = (inputs[k] + self.offsets[k]).long()
            if bool((index < 0).any()) or bool((index >= table.shape[0]).any()):
                raise ValueError(
                    f"{self.names[k]} outside the range this model embeds "
                    f"({-self.offsets[k]} to {table.shape[0] - 1 - self.offsets[k]})"
                )
            rows.append(table[index][batch])
        return torch.nn.functional.silu(torch.cat(rows, dim=-1) @ self.projection)


def edge_features(config: MACEConfig, first: bool) -> tuple[tuple[Irrep, ...] | None, int | None]:
    """Irreps and channels of the features a layer sends along edges (None: its input's)."""
    if config.edge_irreps is None:
        return None, None
    edge = FeatureIrreps.parse(config.edge_irreps)
    if first:
        if not config.edge_irreps_first:
            return None, None
        return (Irrep(0, 1),), edge.channels
    return tuple(edge.irreps), edge.channels


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
        self.heads = list(config.heads)
        self.num_heads = len(self.heads)
        self.embedding = nn.Parameter(torch.randn(num_elements, c, dtype=dtype))
        self.radial = RadialEmbedding(
            config.r_max, config.num_bessel, config.num_polynomial_cutoff, dtype
        )
        self.distance_transform = distance_transform(config.distance_transform, dtype)
        self.apply_cutoff = config.apply_cutoff
        self.pair_repulsion = (
            ZBLRepulsion(config.num_polynomial_cutoff, dtype=dtype)
            if config.pair_repulsion
            else None
        )
        self.irreps_sh = tuple(spherical_harmonics_irreps(config.max_ell))
        self.spherical_harmonics = SphericalHarmonics(config.max_ell, dtype)
        self.scale, self.shift = config.per_head("scale")[0], config.per_head("shift")[0]
        # per-head scale and shift (config values; not in the state dict)
        self.register_buffer(
            "head_scale", torch.tensor(config.per_head("scale"), dtype=dtype), persistent=False
        )
        self.register_buffer(
            "head_shift", torch.tensor(config.per_head("shift"), dtype=dtype), persistent=False
        )
        self.agnostic_product = config.agnostic_product
        self.joint_embedding: JointEmbedding | None = None
        self.embedding_inputs: list[str] = []
        if config.embedding_specs is not None:
            self.joint_embedding = JointEmbedding(config.embedding_specs, c, dtype)
            self.embedding_inputs = list(config.embedding_specs)
        self.embedding_readout: nn.Parameter | None = None
        if config.embedding_readout:
            if config.embedding_specs is None:
                raise ValueError("embedding_readout needs embedding_specs")
            self.embedding_readout = nn.Parameter(torch.randn(c, self.num_heads, dtype=dtype))

        self.halo = HaloExchange()  # between layers when atoms have owners (LAMMPS)
        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps_in: tuple[Irrep, ...] = (Irrep(0, 1),)
        for t, correlation in enumerate(config.correlations):
            first, last = t == 0, t == config.num_interactions - 1
            irreps_out = features.scalars().irreps if last else features.irreps
            irreps_a = _a_feature_irreps(config, first)
            kind = config.interaction_of(t)
            residual = config.residual_first or not first or kind == "nonlinear"
            irreps_edge, edge_channels = edge_features(config, first)
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
                    kind=kind,
                    irreps_edge=irreps_edge,
                    edge_channels=edge_channels,
                )
            )
            product_elements = 1 if config.agnostic_product else num_elements
            self.products.append(
                ProductBlock(irreps_a, irreps_out, c, correlation, product_elements, dtype)
            )
            mlp_readout = last and config.num_interactions > 1
            hidden = config.readout_mlp if mlp_readout else []
            bias = mlp_readout and config.readout_bias
            if bias:
                hidden = [config.readout_mlp[0], config.readout_mlp[0]]
            self.readouts.append(Readout(irreps_out, c, hidden, dtype, self.num_heads, bias))
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
        head: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energies (eV), per-atom energies including E0 (eV), forces (eV/Å) and, on request,
        virials (eV, ``-∂E/∂ε``) and stress (eV/Å³, ``(1/V) ∂E/∂ε``; zero for structures that
        are not periodic in all three directions) of every graph in the batch.
        ``create_graph=True`` keeps forces and stress differentiable (training on forces).
        ``head``: the head index of each graph ``[graphs]`` (default: the graph's ``head``,
        else the first head)."""
        graph = graph.to(device=self.atomic_energies.device, dtype=self.atomic_energies.dtype)
        if head is None:
            head = graph.head
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
            head=head,
            total_charge=graph.total_charge,
            total_spin=graph.total_spin,
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
        head: torch.Tensor | None = None,
        total_charge: torch.Tensor | None = None,
        total_spin: torch.Tensor | None = None,
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
            head,
            total_charge,
            total_spin,
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
        head: torch.Tensor | None = None,
        total_charge: torch.Tensor | None = None,
        total_spin: torch.Tensor | None = None,
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
            head,
            total_charge,
            total_spin,
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
        head: torch.Tensor | None = None,
        total_charge: torch.Tensor | None = None,
        total_spin: torch.Tensor | None = None,
        owners: torch.Tensor | None = None,
        num_local: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies ``[G]`` and per-atom energies with E0 ``[n]`` (eV): eq. 8-13.

        ``owners`` ``[n]``: the atoms are a domain's ``num_local`` own atoms followed by copies
        of others (LAMMPS' ghosts), edges end on own atoms (or come in reversed pairs). Node
        updates are then computed for the own atoms only, and before every layer after the
        first the copies take their owners' features (:mod:`openmace.model.halo`); the
        per-atom energies returned are the own atoms' ``[num_local]``."""
        species = self.species(atomic_numbers)
        groups = element_groups(species, self.num_elements)
        product_groups = groups
        if self.agnostic_product:
            product_groups = element_groups(torch.zeros_like(species), 1)
        sender, receiver = edge_index[0], edge_index[1]
        if cell.shape[0] == 1:  # one structure: one product, no per-edge copy of the cell
            shifts = unit_shifts @ cell[0]
        else:
            shifts = torch.einsum("ei,eij->ej", unit_shifts, cell[batch[sender]])
        vectors = positions[receiver] - positions[sender] + shifts
        lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        # an edge and its reverse have the same length and opposite directions: radial
        # features (and the radial MLPs of the interactions) and spherical harmonics once per
        # pair when the edges come in reversed halves
        pairs = paired_edges(edge_index, unit_shifts)
        if pairs == 0 and owners is not None:  # a domain: own pairs both ways, then one-way
            pairs = paired_edges(edge_index, unit_shifts, int((sender < num_local).sum()) // 2)
        sh = self.spherical_harmonics(vectors, pairs)
        radial, cutoff = self.radial_features(
            radial_rows(lengths, pairs),
            atomic_numbers[radial_rows(sender, pairs)],
            atomic_numbers[radial_rows(receiver, pairs)],
        )

        num_atoms = positions.shape[0]
        node_head = self._node_heads(head, batch)
        site = positions.new_zeros(num_atoms)
        if self.pair_repulsion is not None:
            site = site + self.pair_repulsion(
                lengths, atomic_numbers[sender], atomic_numbers[receiver], num_atoms, receiver
            )
        h0 = (self.embedding * self.num_elements**-0.5)[species]
        extra = positions.new_zeros(num_atoms)  # embedding readout: added to E0, unscaled
        if self.joint_embedding is not None:
            h0 = h0 + self.joint_embedding(
                self._embedding_inputs(total_charge, total_spin, num_graphs), batch
            )
            if self.embedding_readout is not None:
                w = self.embedding_readout
                extra = self._select_head((h0 @ w) * w.shape[0] ** -0.5, node_head)
        h = h0.unsqueeze(-1)
        own: ElementGroups | None = None
        receivers = num_atoms  # rows of the pooled messages: every atom an edge ends on
        if owners is not None:  # a domain: node updates of its own atoms only
            species, batch, site = species[:num_local], batch[:num_local], site[:num_local]
            extra = extra[:num_local]
            own = product_groups = element_groups(species, self.num_elements)
            if self.agnostic_product:
                product_groups = element_groups(torch.zeros_like(species), 1)
            if node_head is not None:
                node_head = node_head[:num_local]
            # edges ending on copies (all pairs both ways) are summed and dropped; the plugin's
            # edges end on own atoms only
            if receiver.numel() == 0 or int(receiver.max()) < num_local:
                receivers = num_local
        layer = 0
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            if owners is not None and layer > 0:
                h = self.halo(h, owners)
            layer += 1
            a, residual = interaction(
                h, groups, sh, radial, sender, receiver, cutoff, own, receivers
            )
            h = product(a, product_groups, residual)
            site = site + self._select_head(readout(h), node_head)

        # the reference energies E0 (large: ~1e3 eV per atom) and the learned part are summed
        # separately: summed together, float32 rounds every atom's learned energy at the
        # magnitude of the running total, configuration-dependent noise of ~0.1 meV/atom that
        # the energy loss then fits (measured on rMD17 aspirin); separately, the E0 rounding is
        # a constant per composition
        if node_head is None:
            e0 = self.atomic_energies[species]
            learned = self.scale * site + self.shift + extra
        else:
            e0 = self.atomic_energies[node_head, species]
            learned = self.head_scale[node_head] * site + self.head_shift[node_head] + extra
        energy = positions.new_zeros(num_graphs).index_add(0, batch, e0)
        energy = energy + positions.new_zeros(num_graphs).index_add(0, batch, learned)
        return energy, e0 + learned

    def radial_features(
        self, lengths: torch.Tensor, z_sender: torch.Tensor, z_receiver: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Radial features ``[rows, num_bessel]`` of edge lengths ``[rows, 1]`` (Å): the Bessel
        basis of the (transformed) length times the cutoff envelope of the length; with
        ``apply_cutoff=False`` the envelope ``[rows, 1]`` is returned separately (it then
        multiplies the radial MLPs' outputs)."""
        transformed = lengths
        if self.distance_transform is not None:
            transformed = self.distance_transform(lengths, z_sender, z_receiver)
        basis = self.radial.bessel(transformed)
        envelope = polynomial_cutoff(lengths / self.radial.r_max, self.radial.p)
        if self.apply_cutoff:
            return basis * envelope, None
        return basis, envelope

    def _node_heads(self, head: torch.Tensor | None, batch: torch.Tensor) -> torch.Tensor | None:
        """Head index of each atom (None: a single-head model)."""
        if self.num_heads == 1:
            return None
        if head is None:
            return torch.zeros_like(batch)
        if bool((head < 0).any()) or bool((head >= self.num_heads).any()):
            raise ValueError(f"head index outside 0..{self.num_heads - 1}")
        return head[batch]

    def _select_head(self, values: torch.Tensor, node_head: torch.Tensor | None) -> torch.Tensor:
        """``[n]`` from per-head values ``[n, heads]`` (single head: ``[n]`` or ``[n, 1]``)."""
        if node_head is None:
            return values.reshape(values.shape[0])
        return values.gather(1, node_head.unsqueeze(1)).squeeze(1)

    def _embedding_inputs(
        self, total_charge: torch.Tensor | None, total_spin: torch.Tensor | None, num_graphs: int
    ) -> list[torch.Tensor]:
        inputs: list[torch.Tensor] = []
        for name in self.embedding_inputs:
            value = total_charge if name == "total_charge" else total_spin
            if value is None:
                key = "charge" if name == "total_charge" else "spin"
                raise ValueError(
                    "this model needs each structure's "
                    + name
                    + " (ASE: atoms.info['"
                    + key
                    + "']; spin as the multiplicity 2S+1)"
                )
            inputs.append(value.reshape(num_graphs))
        return inputs


# per edge, numbers every implementation holds: the graph, edge vectors, lengths, harmonics and
# their autograd records (calibrated with the compiled kernels' estimate, openmace.accel)
GRAPH_NUMBERS_PER_EDGE = 350 * 1.5
