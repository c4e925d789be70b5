"""Channel-wise ("uvu") tensor product of features with spherical harmonics (paper eq. 8).

For every allowed path ``(l1, l2) → l3`` (node irrep ``l1``, harmonic ``l2``, target ``l3``):

    m_{c, l3}(edge) = w_{path, c}(r) · Σ_{m1 m2} C^{l3 m3}_{l1 m1, l2 m2} x_{c, l1 m1} Y_{l2 m2}(r̂)

Each path keeps its own output slot; paths are ordered by output irrep (stable), which is
mace-torch's ordering of its ``conv_tp`` instructions, so converted radial weights line up.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.o3.clebsch_gordan import clebsch_gordan
from openmace.o3.irreps import Irrep, irreps_dim, irreps_slices


class ChannelwiseTensorProduct(nn.Module):
    """Edge-wise product ``x [e, c, dim_in] ⊗ Y [e, dim_sh] → [e, c, dim_mid]`` with weights."""

    def __init__(
        self,
        irreps_in: list[Irrep] | tuple[Irrep, ...],
        irreps_sh: list[Irrep] | tuple[Irrep, ...],
        irreps_target: list[Irrep] | tuple[Irrep, ...],
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        target = set(irreps_target)
        paths = []
        for i1, ir1 in enumerate(irreps_in):
            for i2, ir2 in enumerate(irreps_sh):
                for ir3 in ir1 * ir2:
                    if ir3 in target:
                        paths.append((i1, i2, ir3))
        # stable sort by output irrep: (l, p) with odd before even, as e3nn orders irreps
        paths.sort(key=lambda path: (path[2].l, path[2].p))
        self.paths: list[tuple[int, int, Irrep]] = paths
        self.irreps_in = tuple(irreps_in)
        self.irreps_sh = tuple(irreps_sh)
        # irreps of the output slots: (number of paths, irrep) per distinct output irrep
        self.irreps_mid: list[tuple[int, Irrep]] = []
        for *_, ir3 in paths:
            if self.irreps_mid and self.irreps_mid[-1][1] == ir3:
                self.irreps_mid[-1] = (self.irreps_mid[-1][0] + 1, ir3)
            else:
                self.irreps_mid.append((1, ir3))
        self.mid_blocks = [(count, ir.dim) for count, ir in self.irreps_mid]
        self.mid_sizes = [count * dim for count, dim in self.mid_blocks]
        self.dim_mid = dim_mid = sum(ir3.dim for *_, ir3 in paths)
        cg = torch.zeros(irreps_dim(irreps_in), irreps_dim(irreps_sh), dim_mid, dtype=torch.float64)
        s_in, s_sh = irreps_slices(irreps_in), irreps_slices(irreps_sh)
        path_of_slot = []
        start = 0
        for p, (i1, i2, ir3) in enumerate(paths):
            block = clebsch_gordan(irreps_in[i1].l, irreps_sh[i2].l, ir3.l)
            cg[s_in[i1], s_sh[i2], start : start + ir3.dim] = block
            path_of_slot += [p] * ir3.dim
            start += ir3.dim
        self.register_buffer("cg", cg.to(dtype), persistent=False)
        self.register_buffer(
            "path_of_slot", torch.tensor(path_of_slot, dtype=torch.long), persistent=False
        )
        # cg as a matrix [dim_sh, dim_mid · dim_in]: Y [e, dim_sh] @ it = coupling [e, mid, in]
        self.register_buffer(
            "cg_matrix",
            self.cg.permute(1, 2, 0).reshape(irreps_dim(irreps_sh), -1).contiguous(),
            persistent=False,
        )
        # the nonzero coefficients by output slot (then harmonic, then input component), for
        # the compiled kernels (openmace.kernels): slot m owns nonzeros slot_start[m]:[m + 1]
        nonzero = torch.nonzero(cg.permute(2, 1, 0))  # rows (slot, harmonic, input), sorted
        counts = torch.bincount(nonzero[:, 0], minlength=dim_mid)
        self.register_buffer(
            "slot_start", torch.cat([counts.new_zeros(1), counts.cumsum(0)]), persistent=False
        )
        self.register_buffer("nz_sh", nonzero[:, 1].contiguous(), persistent=False)
        self.register_buffer("nz_in", nonzero[:, 2].contiguous(), persistent=False)
        nz_val = cg[nonzero[:, 2], nonzero[:, 1], nonzero[:, 0]]
        self.register_buffer("nz_val", nz_val.to(dtype), persistent=False)
        # per output irrep: (first slot, end slot, first path, end path, 2l+1); the paths of
        # one output irrep are consecutive and so are their slots
        self.weight_blocks: list[tuple[int, int, int, int, int]] = []
        slot = path = 0
        for count, ir in self.irreps_mid:
            self.weight_blocks.append((slot, slot + count * ir.dim, path, path + count, ir.dim))
            slot, path = slot + count * ir.dim, path + count

    @torch.jit.unused
    def sparse_cg(self) -> tuple[torch.Tensor, ...]:
        """(slot_start, path_of_slot, nz_sh, nz_in, nz_val): the coupling in the form of the
        compiled kernels' arguments."""
        return self.slot_start, self.path_of_slot, self.nz_sh, self.nz_in, self.nz_val

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x [e, dim_in, c]``, ``sh [e, dim_sh]``, ``weights [e, paths, c]`` → ``[e, mid, c]``.

        Channels are the last (contiguous) axis, so each path's weight multiplies its output
        slots elementwise over channels."""
        coupling = torch.einsum("ijp,ej->epi", self.cg, sh)
        if x.shape[1] == 1:
            # scalar inputs (first layer): weight the scalars per path first ([e, paths, c],
            # small), then one broadcast product with the coupling. (bmm with an inner size of
            # 1 runs, with its derivatives, as a loop over edges.)
            return coupling * (x * weights).index_select(1, self.path_of_slot)
        out = torch.bmm(coupling, x)
        return out * weights.index_select(1, self.path_of_slot)

    def split_mid(self, mid: torch.Tensor) -> list[torch.Tensor]:
        """``[n, dim_mid, c]`` → per output irrep ``[n, paths · c, 2l+1]`` (path-major)."""
        blocks: list[torch.Tensor] = []
        n, c = mid.shape[0], mid.shape[2]
        for k, part in enumerate(mid.split(self.mid_sizes, dim=1)):
            count, dim = self.mid_blocks[k]
            block = part.reshape(n, count, dim, c).transpose(2, 3)
            blocks.append(block.reshape(n, count * c, dim))
        return blocks
