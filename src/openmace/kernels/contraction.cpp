// Fused CPU kernels for the symmetric contraction of MACE (paper eq. 10-11, Algorithm 1):
//
//     out[a, M, c] = sum_s P[z_a, s, M, c] * monomial_s(A[a, :, c])
//
// over the monomials s of every degree with a nonzero coupling coefficient. For each atom and
// block of channels the monomials are built degree by degree in a small scratch buffer (one
// multiplication each: monomial = prefix * A[last]) and never stored; the backward pass rebuilds
// them and runs the recursion in reverse. The weights P of the atom's element are contracted
// with the coupling basis beforehand (one [monomials, M, channels] slice per element).
// Threads split the channel blocks; each thread keeps its weights slice in cache while it walks
// over the atoms.

#include <torch/types.h>  // no Python: these sources are also compiled into the LAMMPS plugin

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

// The monomial recursion: scratch rows 0..num_first-1 are A[first[t]]; step q sets row dst[q]
// to row src[q] times A[last[q]] (steps in order of degree); column s of P reads row pos[s].
struct Plan {
  const int64_t* first;
  int64_t num_first;
  const int64_t *dst, *src, *last;
  int64_t num_steps;
  const int64_t* pos;
  int64_t num_columns;  // S
  int64_t num_rows;     // scratch rows
};

struct Sizes {
  int64_t atoms, dim, outputs, channels;  // n, dim of A, M, c
};

template <typename scalar_t, int64_t B>
void build_monomials(const Plan& plan, const scalar_t* __restrict__ xa, int64_t C,
                     scalar_t* __restrict__ mono) {
  for (int64_t t = 0; t < plan.num_first; ++t) {
    const scalar_t* xi = xa + plan.first[t] * C;
    for (int64_t c = 0; c < B; ++c) mono[t * B + c] = xi[c];
  }
  for (int64_t q = 0; q < plan.num_steps; ++q) {
    const scalar_t* xi = xa + plan.last[q] * C;
    const scalar_t* prefix = mono + plan.src[q] * B;
    scalar_t* target = mono + plan.dst[q] * B;
#pragma omp simd
    for (int64_t c = 0; c < B; ++c) target[c] = prefix[c] * xi[c];
  }
}

template <typename scalar_t, int64_t B>
void forward_block(const scalar_t* __restrict__ x, const int64_t* species,
                   const scalar_t* __restrict__ p, const Plan& plan, const Sizes& n,
                   scalar_t* __restrict__ out, int64_t c0, scalar_t* mono, scalar_t* acc) {
  const int64_t C = n.channels, M = n.outputs;
  for (int64_t a = 0; a < n.atoms; ++a) {
    build_monomials<scalar_t, B>(plan, x + a * n.dim * C + c0, C, mono);
    const scalar_t* pz = p + species[a] * plan.num_columns * M * C + c0;
    std::fill(acc, acc + M * B, scalar_t(0));
    for (int64_t s = 0; s < plan.num_columns; ++s) {
      const scalar_t* m = mono + plan.pos[s] * B;
      const scalar_t* ps = pz + s * M * C;
      for (int64_t k = 0; k < M; ++k) {
#pragma omp simd
        for (int64_t c = 0; c < B; ++c) acc[k * B + c] += ps[k * C + c] * m[c];
      }
    }
    scalar_t* o = out + a * M * C + c0;
    for (int64_t k = 0; k < M; ++k) {
      for (int64_t c = 0; c < B; ++c) o[k * C + c] = acc[k * B + c];
    }
  }
}

template <typename scalar_t, int64_t B>
void backward_block(const scalar_t* __restrict__ x, const int64_t* species,
                    const scalar_t* __restrict__ p, const Plan& plan, const Sizes& n,
                    const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ grad_x,
                    int64_t c0, scalar_t* mono, scalar_t* grad_mono) {
  const int64_t C = n.channels, M = n.outputs;
  for (int64_t a = 0; a < n.atoms; ++a) {
    const scalar_t* xa = x + a * n.dim * C + c0;
    build_monomials<scalar_t, B>(plan, xa, C, mono);
    const scalar_t* pz = p + species[a] * plan.num_columns * M * C + c0;
    const scalar_t* g = grad_out + a * M * C + c0;
    std::fill(grad_mono, grad_mono + plan.num_rows * B, scalar_t(0));
    for (int64_t s = 0; s < plan.num_columns; ++s) {
      scalar_t* gm = grad_mono + plan.pos[s] * B;
      const scalar_t* ps = pz + s * M * C;
      for (int64_t k = 0; k < M; ++k) {
#pragma omp simd
        for (int64_t c = 0; c < B; ++c) gm[c] += ps[k * C + c] * g[k * C + c];
      }
    }
    scalar_t* gx = grad_x + a * n.dim * C + c0;
    for (int64_t q = plan.num_steps - 1; q >= 0; --q) {
      const scalar_t* gd = grad_mono + plan.dst[q] * B;
      const scalar_t* xi = xa + plan.last[q] * C;
      const scalar_t* prefix = mono + plan.src[q] * B;
      scalar_t* gp = grad_mono + plan.src[q] * B;
      scalar_t* gxi = gx + plan.last[q] * C;
#pragma omp simd
      for (int64_t c = 0; c < B; ++c) {
        gp[c] += gd[c] * xi[c];
        gxi[c] += gd[c] * prefix[c];
      }
    }
    for (int64_t t = 0; t < plan.num_first; ++t) {
      const scalar_t* gd = grad_mono + t * B;
      scalar_t* gxi = gx + plan.first[t] * C;
      for (int64_t c = 0; c < B; ++c) gxi[c] += gd[c];
    }
  }
}

Plan make_plan(const torch::Tensor& first, const torch::Tensor& dst, const torch::Tensor& src,
               const torch::Tensor& last, const torch::Tensor& pos, int64_t num_rows) {
  for (const auto* t : {&first, &dst, &src, &last, &pos}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == torch::kLong,
                "contraction kernel: contiguous int64 plan");
  }
  return Plan{first.data_ptr<int64_t>(), first.size(0), dst.data_ptr<int64_t>(),
              src.data_ptr<int64_t>(),   last.data_ptr<int64_t>(), dst.size(0),
              pos.data_ptr<int64_t>(),   pos.size(0),         num_rows};
}

void check(const torch::Tensor& x, const torch::Tensor& species, const torch::Tensor& p,
           const Plan& plan) {
  for (const auto* t : {&x, &species, &p}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "contraction kernel: contiguous CPU");
  }
  TORCH_CHECK(x.scalar_type() == p.scalar_type(), "contraction kernel: one floating dtype");
  TORCH_CHECK(species.scalar_type() == torch::kLong && species.size(0) == x.size(0),
              "contraction kernel: one int64 element index per atom");
  TORCH_CHECK(p.size(1) == plan.num_columns && p.size(3) == x.size(2),
              "contraction kernel: weights [elements, monomials, outputs, channels]");
  const int64_t* z = species.data_ptr<int64_t>();
  for (int64_t a = 0; a < species.size(0); ++a) {
    TORCH_CHECK(z[a] >= 0 && z[a] < p.size(0), "contraction kernel: element index out of range");
  }
}

// channel blocks of one cache line (then single channels), split between threads
template <typename scalar_t, typename Body>
void over_channel_blocks(int64_t channels, Body body) {
  constexpr int64_t B = 64 / sizeof(scalar_t);
  const int64_t full = channels / B, blocks = full + (channels - full * B);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (b < full) {
        body(b * B, std::integral_constant<int64_t, B>{});
      } else {
        body(full * B + (b - full), std::integral_constant<int64_t, 1>{});
      }
    }
  });
}

}  // namespace

// x [n, dim, c], species [n], p [elements, S, M, c] -> out [n, M, c]
torch::Tensor contraction_forward(torch::Tensor x, torch::Tensor species, torch::Tensor p,
                                  torch::Tensor first, torch::Tensor dst, torch::Tensor src,
                                  torch::Tensor last, torch::Tensor pos, int64_t num_rows) {
  const Plan plan = make_plan(first, dst, src, last, pos, num_rows);
  check(x, species, p, plan);
  const Sizes n{x.size(0), x.size(1), p.size(2), x.size(2)};
  auto out = torch::empty({n.atoms, n.outputs, n.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contraction_forward", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *pp = p.data_ptr<scalar_t>();
    const int64_t* z = species.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    over_channel_blocks<scalar_t>(n.channels, [&](int64_t c0, auto block) {
      constexpr int64_t B = decltype(block)::value;
      std::vector<scalar_t> scratch((plan.num_rows + n.outputs) * B);
      forward_block<scalar_t, B>(xp, z, pp, plan, n, o, c0, scratch.data(),
                                 scratch.data() + plan.num_rows * B);
    });
  });
  return out;
}

// grad_out [n, M, c] -> grad_x [n, dim, c]
torch::Tensor contraction_backward(torch::Tensor x, torch::Tensor species, torch::Tensor p,
                                   torch::Tensor first, torch::Tensor dst, torch::Tensor src,
                                   torch::Tensor last, torch::Tensor pos, int64_t num_rows,
                                   torch::Tensor grad_out) {
  const Plan plan = make_plan(first, dst, src, last, pos, num_rows);
  check(x, species, p, plan);
  TORCH_CHECK(grad_out.is_contiguous(), "contraction kernel: contiguous gradient");
  const Sizes n{x.size(0), x.size(1), p.size(2), x.size(2)};
  auto grad_x = torch::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contraction_backward", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *pp = p.data_ptr<scalar_t>();
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const int64_t* z = species.data_ptr<int64_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    over_channel_blocks<scalar_t>(n.channels, [&](int64_t c0, auto block) {
      constexpr int64_t B = decltype(block)::value;
      std::vector<scalar_t> scratch(2 * plan.num_rows * B);
      backward_block<scalar_t, B>(xp, z, pp, plan, n, g, gx, c0, scratch.data(),
                                  scratch.data() + plan.num_rows * B);
    });
  });
  return grad_x;
}
