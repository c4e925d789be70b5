// Fused CPU kernels for the pooled edge messages of MACE (paper eq. 8):
//
//     pooled[i, m, c] = sum over edges e = (j -> i) of
//                       w[row(e), path(m), c] * sum_{(m, s, k) in CG} cg * Y[e, s] * x[j, k, c]
//
// with the Clebsch-Gordan coefficients given as their nonzeros grouped by output slot m. One
// pass over the edges, nothing per edge stored; the backward pass recomputes the per-slot sums
// and gives the gradients with respect to x, Y and the radial weights w in one more pass.
//
// Radial rows: a call handles the rows [first, first + rows) of the radial weights (w holds
// just those rows) and their edges. The first `pairs` rows serve a pair of edges each, edge R
// and its reverse R + pairs; the rows after them one edge each, R + pairs (pairs 0: edge R for
// every row; all edges in reversed halves: pairs = number of rows; a LAMMPS domain: its own
// pairs, then one-way edges from copies of other atoms). The pooled output has a row for every
// receiver (a domain's: its own atoms, fewer than the senders).
// Threads split the rows: each thread owns its rows' edges (so the gradients of Y and w are
// written by one thread each) and sums the scattered outputs (pooled, the gradient of x) into a
// private buffer that is added at the end.

#include <torch/types.h>  // no Python: these sources are also compiled into the LAMMPS plugin

#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

struct Coupling {
  const int64_t* slot_start;  // [mid + 1]: nonzeros of slot m are slot_start[m]..[m+1]
  const int64_t* slot_path;   // [mid]
  const int64_t* nz_sh;       // [nnz] harmonic component s
  const int64_t* nz_in;       // [nnz] input component k
  int64_t mid;
};

// The edges of radial rows [r0, r1) of a call (row indices relative to the call's w), visited
// in the order of their receivers (``order``: positions 0..count(), stably sorted by receiver):
// consecutive edges then update (forward) or read (backward) one receiver's row of the pooled
// features, which stays in the core's cache instead of being fetched from the shared cache for
// every edge (MH-1, 64 atoms: the row is 71 x 128 channels, the scatter target 2.3-4.6 MB).
// Positions i < r1 - r0 are each row's (first) edge, the positions after them the reverse
// edges of the paired rows among them (which come first: rows below `pairs`).
struct Edges {
  int64_t first, pairs, r0, r1, paired;
  std::vector<int64_t> order;
  Edges(int64_t first_, int64_t pairs_, int64_t r0_, int64_t r1_, const int64_t* receiver)
      : first(first_), pairs(pairs_), r0(r0_), r1(r1_),
        paired(std::clamp<int64_t>(pairs_ - first_ - r0_, 0, r1_ - r0_)), order(count()) {
    for (int64_t i = 0; i < count(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return receiver[edge(a)] < receiver[edge(b)];
    });
  }
  int64_t count() const { return r1 - r0 + paired; }
  int64_t row(int64_t i) const { return r0 + (i < r1 - r0 ? i : i - (r1 - r0)); }
  int64_t edge(int64_t i) const {
    const int64_t r = first + row(i);  // the row among all the radial rows
    return r + (i >= r1 - r0 || r >= pairs ? pairs : 0);
  }
};

struct Shape {
  int64_t dim_in, dim_sh, paths, channels;
};

// Channels go in blocks of a compile-time width, the widest that fits first (1024 bytes down to
// one cache line, then single channels), so that a channel block's running sums stay in vector
// registers and each nonzero coefficient's index lookups serve as many channels as possible.
template <typename scalar_t, int64_t Bytes, typename Body>
void blocks_of(int64_t& c, int64_t channels, Body& body) {
  constexpr int64_t B = Bytes / sizeof(scalar_t);
  for (; c + B <= channels; c += B) body(c, std::integral_constant<int64_t, B>{});
}

template <typename scalar_t, typename Body>
void by_blocks(int64_t channels, Body body) {
  int64_t c = 0;
  blocks_of<scalar_t, 1024>(c, channels, body);
  blocks_of<scalar_t, 768>(c, channels, body);  // 96 and 192 channels in one block
  blocks_of<scalar_t, 512>(c, channels, body);
  blocks_of<scalar_t, 384>(c, channels, body);
  blocks_of<scalar_t, 256>(c, channels, body);
  blocks_of<scalar_t, 128>(c, channels, body);
  blocks_of<scalar_t, 64>(c, channels, body);
  for (; c < channels; ++c) body(c, std::integral_constant<int64_t, 1>{});
}

// Channel blocks are handled in 64-byte vectors (GCC/Clang vector extensions: AVX-512 registers
// where the CPU has them, pairs of AVX2 registers or scalars elsewhere), written out explicitly:
// left to itself GCC 12 turned the loops below, for slots with three or more nonzeros, into
// scalar code working two nonzeros at a time (10x slower; MH-1's coupling has ~3 per slot).
template <typename scalar_t>
struct Wide;
template <>
struct Wide<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Wide<double> {
  typedef double type __attribute__((vector_size(64)));
};

template <typename scalar_t, int64_t B>
struct Lanes {
  static constexpr bool wide = B * sizeof(scalar_t) >= 64;  // blocks: multiples of 64 bytes, or 1
  using V = std::conditional_t<wide, typename Wide<scalar_t>::type, scalar_t>;
  static constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  static constexpr int64_t N = B / L;
  static V load(const scalar_t* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(scalar_t* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static V splat(scalar_t s) { return V{} + s; }
  static scalar_t sum(V v) {  // of the lanes: halves added pairwise (vector adds)
    if constexpr (wide) {
      typedef scalar_t V32 __attribute__((vector_size(32)));
      typedef scalar_t V16 __attribute__((vector_size(16)));
      V32 a, b;
      std::memcpy(&a, &v, 32);
      std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
      a += b;
      V16 c, d;
      std::memcpy(&c, &a, 16);
      std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
      c += d;
      scalar_t total = 0;
      for (int64_t l = 0; l < static_cast<int64_t>(16 / sizeof(scalar_t)); ++l) total += c[l];
      return total;
    } else {
      return v;
    }
  }
};

// a[j] = sum over the nonzeros k of slot m of cg_k Y[nz_sh[k]] x[nz_in[k], lanes j]
template <typename scalar_t, int64_t B>
inline void slot_sum(typename Lanes<scalar_t, B>::V* a, const scalar_t* xs, const scalar_t* ys,
                     const scalar_t* nz_val, const Coupling& cg, int64_t m, int64_t C) {
  using Ln = Lanes<scalar_t, B>;
#pragma GCC unroll 16
  for (int64_t j = 0; j < Ln::N; ++j) a[j] = typename Ln::V{};
  for (int64_t k = cg.slot_start[m]; k < cg.slot_start[m + 1]; ++k) {
    const auto coef = Ln::splat(nz_val[k] * ys[cg.nz_sh[k]]);
    const scalar_t* xi = xs + cg.nz_in[k] * C;
#pragma GCC unroll 16
    for (int64_t j = 0; j < Ln::N; ++j) a[j] += coef * Ln::load(xi + j * Ln::L);
  }
}

// pooled (for the channels [c0, c0 + B)) += messages of the edges
template <typename scalar_t, int64_t B>
void forward_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sh,
                   const scalar_t* __restrict__ w, const int64_t* sender,
                   const int64_t* receiver, const scalar_t* nz_val, const Coupling& cg,
                   const Edges& edges, const Shape& shape, scalar_t* __restrict__ pooled,
                   int64_t c0) {
  using Ln = Lanes<scalar_t, B>;
  const int64_t C = shape.channels;
  for (const int64_t i : edges.order) {
    const int64_t e = edges.edge(i);
    const scalar_t* xs = x + sender[e] * shape.dim_in * C + c0;
    const scalar_t* ys = sh + e * shape.dim_sh;
    const scalar_t* ws = w + edges.row(i) * shape.paths * C + c0;
    scalar_t* out = pooled + receiver[e] * cg.mid * C + c0;
    for (int64_t m = 0; m < cg.mid; ++m) {
      typename Ln::V a[Ln::N];
      slot_sum<scalar_t, B>(a, xs, ys, nz_val, cg, m, C);
      const scalar_t* wp = ws + cg.slot_path[m] * C;
      scalar_t* o = out + m * C;
#pragma GCC unroll 16
      for (int64_t j = 0; j < Ln::N; ++j) {
        const int64_t c = j * Ln::L;
        Ln::store(o + c, Ln::load(o + c) + Ln::load(wp + c) * a[j]);
      }
    }
  }
}

// grad_x +=, grad_sh +=, grad_w = (channels [c0, c0 + B)) for the edges (a row's weight
// gradient is zeroed at its first edge, in cache, instead of in a separate pass)
template <typename scalar_t, int64_t B>
void backward_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sh,
                    const scalar_t* __restrict__ w, const int64_t* sender,
                    const int64_t* receiver, const scalar_t* nz_val, const Coupling& cg,
                    const scalar_t* __restrict__ grad_pooled, const Edges& edges,
                    const Shape& shape, scalar_t* __restrict__ grad_x,
                    scalar_t* __restrict__ grad_sh, scalar_t* __restrict__ grad_w, int64_t c0) {
  using Ln = Lanes<scalar_t, B>;
  using V = typename Ln::V;
  const int64_t C = shape.channels;
  std::vector<char> written(edges.r1 - edges.r0, 0);  // rows whose gradient has been written
  for (const int64_t i : edges.order) {
    const int64_t e = edges.edge(i), row = edges.row(i);
    const scalar_t* xs = x + sender[e] * shape.dim_in * C + c0;
    const scalar_t* ys = sh + e * shape.dim_sh;
    const scalar_t* ws = w + row * shape.paths * C + c0;
    const scalar_t* g = grad_pooled + receiver[e] * cg.mid * C + c0;
    scalar_t* gx = grad_x + sender[e] * shape.dim_in * C + c0;
    scalar_t* gw = grad_w + row * shape.paths * C + c0;
    scalar_t* gy = grad_sh + e * shape.dim_sh;
    if (!written[row - edges.r0]) {  // a row's first edge: its weight gradient is written
      written[row - edges.r0] = 1;
      for (int64_t p = 0; p < shape.paths; ++p) std::fill(gw + p * C, gw + p * C + B, 0);
    }
    for (int64_t m = 0; m < cg.mid; ++m) {
      const scalar_t* gm = g + m * C;
      const scalar_t* wp = ws + cg.slot_path[m] * C;
      scalar_t* gwp = gw + cg.slot_path[m] * C;
      V a[Ln::N], t[Ln::N];  // t: gradient of the unweighted product
      slot_sum<scalar_t, B>(a, xs, ys, nz_val, cg, m, C);
#pragma GCC unroll 16
      for (int64_t j = 0; j < Ln::N; ++j) {
        const int64_t c = j * Ln::L;
        const V gv = Ln::load(gm + c);
        Ln::store(gwp + c, Ln::load(gwp + c) + gv * a[j]);  // radial weights
        t[j] = gv * Ln::load(wp + c);
      }
      for (int64_t k = cg.slot_start[m]; k < cg.slot_start[m + 1]; ++k) {
        const V coef = Ln::splat(nz_val[k] * ys[cg.nz_sh[k]]);
        const scalar_t* xi = xs + cg.nz_in[k] * C;
        scalar_t* gxi = gx + cg.nz_in[k] * C;
        V dot{};
#pragma GCC unroll 16
        for (int64_t j = 0; j < Ln::N; ++j) {
          const int64_t c = j * Ln::L;
          Ln::store(gxi + c, Ln::load(gxi + c) + coef * t[j]);
          dot += t[j] * Ln::load(xi + c);
        }
        gy[cg.nz_sh[k]] += nz_val[k] * Ln::sum(dot);
      }
    }
  }
}

Coupling coupling(const torch::Tensor& slot_start, const torch::Tensor& slot_path,
                  const torch::Tensor& nz_sh, const torch::Tensor& nz_in) {
  return Coupling{slot_start.data_ptr<int64_t>(), slot_path.data_ptr<int64_t>(),
                  nz_sh.data_ptr<int64_t>(), nz_in.data_ptr<int64_t>(), slot_path.size(0)};
}


// Runs body(edges, scatter target) for each part of the rows in parallel; part p scatters into
// targets[p] (the caller zeroes them once per pass over all chunks and sums them at the end).
template <typename scalar_t, typename Body>
void over_parts(int64_t first, int64_t pairs, int64_t rows, const int64_t* receiver,
                torch::Tensor targets, Body body) {
  const int64_t parts = std::min<int64_t>(edge_parts(rows), targets.size(0));
  const int64_t stride = targets.numel() / targets.size(0);
  scalar_t* base = targets.data_ptr<scalar_t>();
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Edges edges(first, pairs, rows * p / parts, rows * (p + 1) / parts, receiver);
      body(edges, base + p * stride);
    }
  });
}

// out: the scatter targets [parts, rows, ...] (rows: x's atoms for the gradient of x, the
// receivers for the pooled messages); receivers: the pooled messages' rows
void check_inputs(const torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& sh,
                  const torch::Tensor& w, const torch::Tensor& sender,
                  const torch::Tensor& receiver, int64_t first, int64_t pairs,
                  int64_t receivers) {
  TORCH_CHECK(out.dim() == 4 && out.size(0) >= 1, "edge kernels: one scatter target per part");
  TORCH_CHECK(receivers <= x.size(0), "edge kernels: more receivers than atoms");
  for (const auto* t : {&out, &x, &sh, &w, &sender, &receiver}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "edge kernels: contiguous CPU tensors");
  }
  TORCH_CHECK(sender.scalar_type() == torch::kLong && receiver.scalar_type() == torch::kLong,
              "edge kernels: int64 edge indices");
  TORCH_CHECK(x.scalar_type() == sh.scalar_type() && x.scalar_type() == w.scalar_type(),
              "edge kernels: one floating dtype");
  const int64_t edges = sh.size(0), rows = w.size(0);
  TORCH_CHECK(sender.size(0) == edges && receiver.size(0) == edges, "edge kernels: edge count");
  TORCH_CHECK(first >= 0 && pairs >= 0 && first + rows + pairs <= edges,
              "edge kernels: radial rows out of range");
  const int64_t n = x.size(0);
  const int64_t *s = sender.data_ptr<int64_t>(), *r = receiver.data_ptr<int64_t>();
  for (int64_t e = 0; e < edges; ++e) {
    TORCH_CHECK(s[e] >= 0 && s[e] < n, "edge kernels: edge ", e, " from an atom outside 0..",
                n - 1);
    TORCH_CHECK(r[e] >= 0 && r[e] < receivers, "edge kernels: edge ", e,
                " to an atom outside the receivers 0..", receivers - 1);
  }
}

}  // namespace

// threads (scatter parts) for this many radial rows: one per MIN_ROWS rows at most
int64_t edge_parts(int64_t rows) {
  constexpr int64_t MIN_ROWS = 64;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / MIN_ROWS));
}

// pooled[p] [n, mid, c] += messages of the edges of radial rows [first, first + w.size(0)), part
// p of them (one part per thread, at most pooled.size(0) parts; the pooled messages are the sum
// over p); x [n, dim_in, c], sh [e, dim_sh], w [rows, paths, c]: contiguous, one floating dtype;
// pairs: paired edges (see the top of this file); pooled [parts, receivers, mid, c]
void pooled_forward(torch::Tensor pooled, torch::Tensor x, torch::Tensor sh, torch::Tensor w,
                    torch::Tensor sender, torch::Tensor receiver, int64_t first, int64_t pairs,
                    torch::Tensor slot_start, torch::Tensor slot_path, torch::Tensor nz_sh,
                    torch::Tensor nz_in, torch::Tensor nz_val) {
  check_inputs(pooled, x, sh, w, sender, receiver, first, pairs, pooled.size(1));
  const Coupling cg = coupling(slot_start, slot_path, nz_sh, nz_in);
  const Shape shape{x.size(1), sh.size(1), w.size(1), x.size(2)};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pooled_forward", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *shp = sh.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *val = nz_val.data_ptr<scalar_t>();
    const int64_t *snd = sender.data_ptr<int64_t>(), *rcv = receiver.data_ptr<int64_t>();
    const int64_t rows = w.size(0);
    over_parts<scalar_t>(first, pairs, rows, rcv, pooled, [&](const Edges& edges, scalar_t* o) {
      by_blocks<scalar_t>(shape.channels, [&](int64_t c, auto block) {
        forward_block<scalar_t, decltype(block)::value>(xp, shp, wp, snd, rcv, val, cg, edges,
                                                        shape, o, c);
      });
    });
  });
}

// the gradients for the same edges: grad_x[p] [n, dim_in, c] += (parts as in pooled_forward),
// grad_sh [e, dim_sh] +=, grad_w [rows, paths, c] = (written: its old contents do not matter)
void pooled_backward(torch::Tensor grad_x, torch::Tensor grad_sh, torch::Tensor grad_w,
                     torch::Tensor x, torch::Tensor sh, torch::Tensor w, torch::Tensor sender,
                     torch::Tensor receiver, int64_t first, int64_t pairs,
                     torch::Tensor slot_start, torch::Tensor slot_path, torch::Tensor nz_sh,
                     torch::Tensor nz_in, torch::Tensor nz_val, torch::Tensor grad_pooled) {
  check_inputs(grad_x, x, sh, w, sender, receiver, first, pairs, grad_pooled.size(0));
  TORCH_CHECK(grad_x.size(1) == x.size(0), "edge kernels: one [atoms, ...] gradient per part");
  TORCH_CHECK(grad_pooled.is_contiguous() && grad_sh.is_contiguous() && grad_w.is_contiguous(),
              "edge kernels: contiguous gradients");
  const Coupling cg = coupling(slot_start, slot_path, nz_sh, nz_in);
  const Shape shape{x.size(1), sh.size(1), w.size(1), x.size(2)};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pooled_backward", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *shp = sh.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *val = nz_val.data_ptr<scalar_t>();
    const scalar_t* gp = grad_pooled.data_ptr<scalar_t>();
    const int64_t *snd = sender.data_ptr<int64_t>(), *rcv = receiver.data_ptr<int64_t>();
    scalar_t *gy = grad_sh.data_ptr<scalar_t>(), *gw = grad_w.data_ptr<scalar_t>();
    const int64_t rows = w.size(0);
    over_parts<scalar_t>(first, pairs, rows, rcv, grad_x, [&](const Edges& edges, scalar_t* gx) {
      by_blocks<scalar_t>(shape.channels, [&](int64_t c, auto block) {
        backward_block<scalar_t, decltype(block)::value>(xp, shp, wp, snd, rcv, val, cg, gp,
                                                         edges, shape, gx, gy, gw, c);
      });
    });
  });
}
