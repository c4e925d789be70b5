// The compiled kernels as PyTorch operators with autograd, for TorchScript:
//
//   torch.ops.openmace.pooled_messages(x [n, dim_in, c], sh [e, dim_sh], weights [rows, paths, c],
//       sender [e], receiver [e], pairs, slot_start, slot_path, nz_sh, nz_in, nz_val,
//       receivers) -> [receivers, mid, c]
//   torch.ops.openmace.pooled_messages_mlp(x, sh, radial [rows, nb], cutoff [rows, 1]?,
//       sender, receiver, hidden_weights (flat), sizes, last [k, paths * c], act_scale, pairs,
//       slot_start, slot_path, nz_sh, nz_in, nz_val, chunk, receivers) -> [receivers, mid, c]:
//       the same with the weights made here by the radial MLP of plain layers (times the
//       envelope before the last layer, when given): hidden pre-activations kept, the wide last
//       layer's output made chunk rows at a time (the caller sizes chunks; 0: one chunk) forward
//       and again backward; the MLP's backward by hand (the calculator's compiled path keeps
//       the same)
//   torch.ops.openmace.symmetric_contraction(x [n, dim, c], species [n], p [slots, S, M, c],
//       first, dst, src, last, pos, num_rows) -> [n, M, c]
//
//   torch.ops.openmace.halo_exchange(h [local, ...], owners [n]) -> [n, ...]: the local atoms'
//       features followed by the copies', from their owners (openmace/model/halo.py); through
//       the LAMMPS pair style's MPI communication while it has one installed (set_halo_comm),
//       else h[owners]
//
// (pairs: edges 0..pairs-1 and pairs..2 pairs-1 are reversed halves sharing radial rows, the
// edges after them one row each (0: no pairs; as in edge_messages.cpp); receivers: rows of the
// output, every receiver below it (-1: all n atoms; a LAMMPS domain's edges end on its own
// atoms, which come first); the other arguments as in edge_messages.cpp and contraction.cpp.)
// Each is a torch::autograd::Function whose backward runs the hand-written backward kernel, so a
// scripted model differentiates through them (forces, stress) in Python and in C++ (libtorch:
// the LAMMPS plugin compiles these sources too). First derivatives only: a second derivative
// through them is an error (the Python inference path falls back to autograd there instead).

#include <torch/autograd.h>
#include <torch/library.h>

#include "kernels.h"

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// rows of the pooled messages: receivers, or every atom of x for -1
int64_t output_rows(int64_t receivers, const Tensor& x) {
  TORCH_CHECK(receivers >= -1 && receivers <= x.size(0), "openmace: receivers ", receivers,
              " outside -1..", x.size(0));
  return receivers < 0 ? x.size(0) : receivers;
}

void no_second_derivative(const char* what) {
  TORCH_CHECK(!torch::GradMode::is_enabled(), what,
              ": second derivatives (create_graph=True) are not available through the compiled "
              "operators; use the reference implementation");
}

class PooledMessages : public torch::autograd::Function<PooledMessages> {
 public:
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor sh, Tensor weights,
                        Tensor sender, Tensor receiver, int64_t pairs, Tensor slot_start,
                        Tensor slot_path, Tensor nz_sh, Tensor nz_in, Tensor nz_val,
                        int64_t receivers) {
    x = x.contiguous();
    sh = sh.contiguous();
    weights = weights.contiguous();
    sender = sender.contiguous();
    receiver = receiver.contiguous();
    const int64_t rows = weights.size(0), parts = edge_parts(rows);
    auto pooled = x.new_zeros({parts, output_rows(receivers, x), slot_path.size(0), x.size(2)});
    pooled_forward(pooled, x, sh, weights, sender, receiver, 0, pairs, slot_start, slot_path,
                   nz_sh, nz_in, nz_val);
    ctx->save_for_backward(
        {x, sh, weights, sender, receiver, slot_start, slot_path, nz_sh, nz_in, nz_val});
    ctx->saved_data["pairs"] = pairs;
    return parts == 1 ? pooled[0] : pooled.sum(0);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_second_derivative("openmace::pooled_messages");
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &sh = saved[1], &weights = saved[2];
    const int64_t pairs = ctx->saved_data["pairs"].toInt();
    const int64_t parts = edge_parts(weights.size(0));
    auto grad_x = x.new_zeros({parts, x.size(0), x.size(1), x.size(2)});
    auto grad_sh = torch::zeros_like(sh);
    auto grad_w = torch::empty_like(weights);  // written by the kernel
    pooled_backward(grad_x, grad_sh, grad_w, x, sh, weights, saved[3], saved[4], 0, pairs,
                    saved[5], saved[6], saved[7], saved[8], saved[9], grads[0].contiguous());
    return {parts == 1 ? grad_x[0] : grad_x.sum(0), grad_sh, grad_w, Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// radial weights up to this size are kept from the forward pass, larger ones made in chunks of
// FUSED_CHUNK_BYTES: declared in openmace/kernels/limits.py, given to both builds as -D flags
#if !defined(OPENMACE_KEEP_WEIGHTS_BYTES) || !defined(OPENMACE_FUSED_CHUNK_BYTES)
#error "build with openmace.kernels.limits.definition_flags()"
#endif
constexpr int64_t KEEP_WEIGHTS_BYTES = int64_t(OPENMACE_KEEP_WEIGHTS_BYTES);
constexpr int64_t FUSED_CHUNK_BYTES = int64_t(OPENMACE_FUSED_CHUNK_BYTES);

// A [rows, cols] buffer of the calling thread, kept from call to call (slot 0: radial weights
// made and consumed within one pass, slot 1: their gradient), as _scratch in
// openmace/accel/messages.py: a fresh buffer of FUSED_CHUNK_BYTES is mapped by the allocator and
// page-faulted in again at every call (16 000 faults per layer and step). Never saved for the
// backward pass: its contents are dead when the pass that wrote them returns.
Tensor scratch(int slot, const Tensor& like, int64_t rows, int64_t cols) {
  thread_local Tensor buffers[2];
  Tensor& buffer = buffers[slot];
  const int64_t numel = rows * cols;
  if (!buffer.defined() || buffer.scalar_type() != like.scalar_type() ||
      buffer.device() != like.device() || buffer.numel() < numel)
    buffer = torch::empty({numel}, like.options());
  return buffer.narrow(0, 0, numel).view({rows, cols});
}

// The radial MLP of plain layers (bias-free, normalised SiLU between layers; weights already
// scaled by 1/sqrt(fan_in)): hidden [rows, sizes[l]] pre-activations are kept, the wide last
// layer's output [rows, paths * c] is made chunk by chunk and consumed by the edge kernels.
struct RadialMLP {
  std::vector<Tensor> hidden;  // the hidden layers' weights
  Tensor last;                 // [k, paths * c]
  double act_scale;

  RadialMLP(const Tensor& flat, c10::IntArrayRef sizes, Tensor last_, double scale)
      : last(std::move(last_)), act_scale(scale) {
    int64_t offset = 0;
    for (size_t l = 0; l + 2 < sizes.size(); ++l) {  // all but the last layer
      const int64_t n = sizes[l] * sizes[l + 1];
      hidden.push_back(flat.narrow(0, offset, n).view({sizes[l], sizes[l + 1]}));
      offset += n;
    }
  }
  // the activation's scale is folded into the next layer's weights when it is 1 here
  Tensor act(const Tensor& pre) const {
    return act_scale == 1.0 ? torch::silu(pre) : torch::silu(pre) * act_scale;
  }
  // the last layer's input for rows [a, b): act(last pre-activation) (or the radial features),
  // times the envelope when there is one
  Tensor last_input(const std::vector<Tensor>& pre, const Tensor& radial, const Tensor& cutoff,
                    int64_t a, int64_t b) const {
    Tensor h = pre.empty() ? radial.narrow(0, a, b - a) : act(pre.back().narrow(0, a, b - a));
    return cutoff.numel() > 0 ? h * cutoff.narrow(0, a, b - a) : h;
  }
};

class PooledMessagesMLP : public torch::autograd::Function<PooledMessagesMLP> {
 public:
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor sh, Tensor radial,
                        Tensor cutoff, Tensor sender, Tensor receiver, Tensor hidden_weights,
                        std::vector<int64_t> sizes, Tensor last, double act_scale, int64_t pairs,
                        Tensor slot_start, Tensor slot_path, Tensor nz_sh, Tensor nz_in,
                        Tensor nz_val, int64_t chunk_rows, int64_t receivers) {
    x = x.contiguous();
    sh = sh.contiguous();
    sender = sender.contiguous();
    receiver = receiver.contiguous();
    last = last.contiguous();
    const RadialMLP mlp(hidden_weights, sizes, last, act_scale);
    std::vector<Tensor> pre;  // kept for the backward pass
    Tensor h = radial;
    for (const auto& w : mlp.hidden) {
      pre.push_back(torch::mm(h, w));
      h = mlp.act(pre.back());
    }
    const int64_t rows = radial.size(0), c = x.size(2), paths = last.size(1) / c;
    const int64_t parts = edge_parts(rows);
    // chunk_rows 0 (the model files): all radial weights made in one piece and kept for the
    // backward pass when they fit in KEEP_WEIGHTS_BYTES (as the calculator's compiled path),
    // else made in chunks of FUSED_CHUNK_BYTES, forward and again backward; either way the
    // backward pass makes their gradient chunk by chunk (one chunk's buffer). Tests: chunk_rows
    // > 0 chunks of that many rows, not kept; < 0 kept, backward chunks of -chunk_rows rows.
    const int64_t width_bytes = last.size(1) * x.element_size();
    const int64_t rows_per_chunk = chunk_rows != 0
                                       ? std::abs(chunk_rows)
                                       : std::max<int64_t>(1, FUSED_CHUNK_BYTES / width_bytes);
    const bool keep = chunk_rows != 0 ? chunk_rows < 0 : rows * width_bytes <= KEEP_WEIGHTS_BYTES;
    const int64_t chunk = keep ? std::max<int64_t>(1, rows) : rows_per_chunk;
    auto pooled = x.new_zeros({parts, output_rows(receivers, x), slot_path.size(0), c});
    const int64_t rows_in_buffer = std::max<int64_t>(1, std::min(chunk, rows));
    auto buffer = keep ? x.new_empty({rows_in_buffer, last.size(1)})
                       : scratch(0, x, rows_in_buffer, last.size(1));
    for (int64_t a = 0; a < rows; a += chunk) {
      const int64_t b = std::min(a + chunk, rows);
      auto weights = buffer.narrow(0, 0, b - a);
      at::mm_out(weights, mlp.last_input(pre, radial, cutoff, a, b), last);
      pooled_forward(pooled, x, sh, weights.view({b - a, paths, c}), sender, receiver, a, pairs,
                     slot_start, slot_path, nz_sh, nz_in, nz_val);
    }
    std::vector<Tensor> saved{x,         sh,        radial, cutoff, sender, receiver,
                              hidden_weights, last, slot_start, slot_path, nz_sh, nz_in,
                              nz_val};
    saved.insert(saved.end(), pre.begin(), pre.end());
    ctx->save_for_backward(saved);
    if (keep) ctx->saved_data["weights"] = buffer;
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["act_scale"] = act_scale;
    ctx->saved_data["pairs"] = pairs;
    ctx->saved_data["chunk"] = rows_per_chunk;
    return parts == 1 ? pooled[0] : pooled.sum(0);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_second_derivative("openmace::pooled_messages_mlp");
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &sh = s[1], &radial = s[2], &cutoff = s[3], &last = s[7];
    const std::vector<Tensor> pre(s.begin() + 13, s.end());
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const RadialMLP mlp(s[6], sizes, last, ctx->saved_data["act_scale"].toDouble());
    const int64_t pairs = ctx->saved_data["pairs"].toInt();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const int64_t rows = radial.size(0), c = x.size(2), paths = last.size(1) / c;
    const int64_t parts = edge_parts(rows);
    auto grad_x = x.new_zeros({parts, x.size(0), x.size(1), c});
    auto grad_sh = torch::zeros_like(sh);
    auto grad_h = x.new_empty({rows, last.size(0)});  // of the last layer's input
    const auto grad_pooled = grads[0].contiguous();
    const bool kept = ctx->saved_data.count("weights") > 0;  // the whole weights
    const int64_t rows_in_buffer = std::max<int64_t>(1, std::min(chunk, rows));
    auto buffer = kept ? ctx->saved_data["weights"].toTensor()
                       : scratch(0, x, rows_in_buffer, last.size(1));
    // one chunk's gradient of the weights, written by the kernel: a whole [rows, paths * c]
    // gradient would double the kept weights' memory
    auto grad_buffer = scratch(1, x, rows_in_buffer, last.size(1));
    for (int64_t a = 0; a < rows; a += chunk) {
      const int64_t b = std::min(a + chunk, rows);
      auto weights = buffer.narrow(0, kept ? a : 0, b - a);
      auto grad_weights = grad_buffer.narrow(0, 0, b - a);
      if (!kept) at::mm_out(weights, mlp.last_input(pre, radial, cutoff, a, b), last);
      pooled_backward(grad_x, grad_sh, grad_weights.view({b - a, paths, c}), x, sh,
                      weights.view({b - a, paths, c}), s[4], s[5], a, pairs, s[8], s[9], s[10],
                      s[11], s[12], grad_pooled);
      auto out = grad_h.narrow(0, a, b - a);
      at::mm_out(out, grad_weights, last.t());
    }
    Tensor grad_cutoff;
    if (cutoff.numel() > 0) {  // h · cutoff: the envelope's gradient, then the input's
      const Tensor h = pre.empty() ? radial : mlp.act(pre.back());
      grad_cutoff = (grad_h * h).sum(1, true);
      grad_h = grad_h * cutoff;
    }
    for (int64_t l = static_cast<int64_t>(mlp.hidden.size()) - 1; l >= 0; --l) {
      auto grad_pre = at::silu_backward(grad_h, pre[l]);
      if (mlp.act_scale != 1.0) grad_pre = grad_pre * mlp.act_scale;
      grad_h = torch::mm(grad_pre, mlp.hidden[l].t());
    }
    return {parts == 1 ? grad_x[0] : grad_x.sum(0), grad_sh, grad_h, grad_cutoff, Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

class SymmetricContraction : public torch::autograd::Function<SymmetricContraction> {
 public:
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor species, Tensor p, Tensor first,
                        Tensor dst, Tensor src, Tensor last, Tensor pos, int64_t num_rows) {
    x = x.contiguous();
    species = species.contiguous();
    auto out = contraction_forward(x, species, p, first, dst, src, last, pos, num_rows);
    ctx->save_for_backward({x, species, p, first, dst, src, last, pos});
    ctx->saved_data["num_rows"] = num_rows;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_second_derivative("openmace::symmetric_contraction");
    const auto s = ctx->get_saved_variables();
    auto grad_x = contraction_backward(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                                       ctx->saved_data["num_rows"].toInt(),
                                       grads[0].contiguous());
    return {grad_x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

HaloComm* halo_comm = nullptr;

// h [local, ...] as rows [n, width] (float64; the copies' rows empty), or the reverse
Tensor as_rows(const Tensor& h, int64_t n) {
  auto rows = torch::zeros({n, h.numel() / std::max<int64_t>(1, h.size(0))},
                           h.options().dtype(torch::kFloat64));
  rows.narrow(0, 0, h.size(0)).copy_(h.reshape({h.size(0), -1}));
  return rows;
}

class Halo : public torch::autograd::Function<Halo> {
 public:
  // h [local, ...] -> [n, ...]: rows 0..local-1 are h, the copies' rows their owners'
  static Tensor forward(AutogradContext* ctx, Tensor h, Tensor owners) {
    TORCH_CHECK(owners.dim() == 1 && owners.size(0) >= h.size(0),
                "openmace::halo_exchange: one owner per atom, local atoms first");
    ctx->save_for_backward({owners});
    ctx->saved_data["local"] = h.size(0);
    ctx->saved_data["via_comm"] = halo_comm != nullptr;
    if (halo_comm == nullptr) return h.index_select(0, owners);
    TORCH_CHECK(h.device().is_cpu(), "openmace::halo_exchange: CPU tensors in LAMMPS");
    auto rows = as_rows(h, owners.size(0));
    halo_comm->forward(rows);
    auto sizes = h.sizes().vec();
    sizes[0] = owners.size(0);
    return rows.to(h.scalar_type()).reshape(sizes);
  }

  // the copies' gradients added to their owners'
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_second_derivative("openmace::halo_exchange");
    const Tensor owners = ctx->get_saved_variables()[0];
    const int64_t local = ctx->saved_data["local"].toInt();
    const Tensor& grad = grads[0];
    auto sizes = grad.sizes().vec();
    sizes[0] = local;
    if (!ctx->saved_data["via_comm"].toBool())
      return {torch::zeros(sizes, grad.options()).index_add_(0, owners, grad), Tensor()};
    TORCH_CHECK(halo_comm != nullptr, "openmace::halo_exchange: backward outside the model call");
    auto rows = grad.reshape({grad.size(0), -1}).to(torch::kFloat64).contiguous().clone();
    halo_comm->reverse(rows);
    return {rows.narrow(0, 0, local).to(grad.scalar_type()).reshape(sizes), Tensor()};
  }
};

Tensor halo_exchange(Tensor h, Tensor owners) { return Halo::apply(h, owners); }

Tensor pooled_messages(Tensor x, Tensor sh, Tensor weights, Tensor sender, Tensor receiver,
                       int64_t pairs, Tensor slot_start, Tensor slot_path, Tensor nz_sh,
                       Tensor nz_in, Tensor nz_val, int64_t receivers) {
  return PooledMessages::apply(x, sh, weights, sender, receiver, pairs, slot_start, slot_path,
                               nz_sh, nz_in, nz_val, receivers);
}

Tensor pooled_messages_mlp(Tensor x, Tensor sh, Tensor radial, std::optional<Tensor> cutoff,
                           Tensor sender, Tensor receiver, Tensor hidden_weights,
                           std::vector<int64_t> sizes, Tensor last, double act_scale,
                           int64_t pairs, Tensor slot_start, Tensor slot_path, Tensor nz_sh,
                           Tensor nz_in, Tensor nz_val, int64_t chunk, int64_t receivers) {
  // no envelope: an empty tensor (an undefined one cannot pass through the autograd Function)
  const Tensor envelope = cutoff.has_value() ? *cutoff : radial.new_empty({0});
  return PooledMessagesMLP::apply(x, sh, radial, envelope, sender, receiver,
                                  hidden_weights, sizes, last, act_scale, pairs, slot_start,
                                  slot_path, nz_sh, nz_in, nz_val, chunk, receivers);
}

Tensor symmetric_contraction(Tensor x, Tensor species, Tensor p, Tensor first, Tensor dst,
                             Tensor src, Tensor last, Tensor pos, int64_t num_rows) {
  return SymmetricContraction::apply(x, species, p, first, dst, src, last, pos, num_rows);
}

}  // namespace

void set_halo_comm(HaloComm* comm) { halo_comm = comm; }

// registered as composite operators: the autograd Functions above record their own graph nodes
TORCH_LIBRARY(openmace, m) {
  m.def(
      "pooled_messages(Tensor x, Tensor sh, Tensor weights, Tensor sender, Tensor receiver, "
      "int pairs, Tensor slot_start, Tensor slot_path, Tensor nz_sh, Tensor nz_in, "
      "Tensor nz_val, int receivers) -> Tensor",
      &pooled_messages);
  m.def(
      "pooled_messages_mlp(Tensor x, Tensor sh, Tensor radial, Tensor? cutoff, Tensor sender, "
      "Tensor receiver, Tensor hidden_weights, int[] sizes, Tensor last, float act_scale, "
      "int pairs, Tensor slot_start, Tensor slot_path, Tensor nz_sh, Tensor nz_in, "
      "Tensor nz_val, int chunk, int receivers) -> Tensor",
      &pooled_messages_mlp);
  m.def(
      "symmetric_contraction(Tensor x, Tensor species, Tensor p, Tensor first, Tensor dst, "
      "Tensor src, Tensor last, Tensor pos, int num_rows) -> Tensor",
      &symmetric_contraction);
  m.def("halo_exchange(Tensor h, Tensor owners) -> Tensor", &halo_exchange);
}
