// The compiled CPU kernels' entry points (edge_messages.cpp, contraction.cpp), shared by the
// Python bindings (bindings.cpp) and the PyTorch operators (ops.cpp).

#pragma once

#include <torch/types.h>

// the number of parts (threads, each with its own scatter target) the edge kernels split this
// many radial rows into
int64_t edge_parts(int64_t rows);
void pooled_forward(torch::Tensor pooled, torch::Tensor x, torch::Tensor sh, torch::Tensor w,
                    torch::Tensor sender, torch::Tensor receiver, int64_t first, int64_t pairs,
                    torch::Tensor slot_start, torch::Tensor slot_path, torch::Tensor nz_sh,
                    torch::Tensor nz_in, torch::Tensor nz_val);
void pooled_backward(torch::Tensor grad_x, torch::Tensor grad_sh, torch::Tensor grad_w,
                     torch::Tensor x, torch::Tensor sh, torch::Tensor w, torch::Tensor sender,
                     torch::Tensor receiver, int64_t first, int64_t pairs,
                     torch::Tensor slot_start, torch::Tensor slot_path, torch::Tensor nz_sh,
                     torch::Tensor nz_in, torch::Tensor nz_val, torch::Tensor grad_pooled);
torch::Tensor contraction_forward(torch::Tensor x, torch::Tensor species, torch::Tensor p,
                                  torch::Tensor first, torch::Tensor dst, torch::Tensor src,
                                  torch::Tensor last, torch::Tensor pos, int64_t num_rows);
torch::Tensor contraction_backward(torch::Tensor x, torch::Tensor species, torch::Tensor p,
                                   torch::Tensor first, torch::Tensor dst, torch::Tensor src,
                                   torch::Tensor last, torch::Tensor pos, int64_t num_rows,
                                   torch::Tensor grad_out);

// Where torch.ops.openmace.halo_exchange takes the features of copied atoms from (ops.cpp):
// the LAMMPS pair style installs its MPI communication for the duration of a model call; with
// none installed the operator gathers rows by the owners tensor (one process).
class HaloComm {
 public:
  // rows [n, width] (float64, contiguous): fill the copies' rows from their owners' rows
  virtual void forward(torch::Tensor rows) = 0;
  // rows [n, width]: add every copy's row to its owner's row (the copies' rows keep values)
  virtual void reverse(torch::Tensor rows) = 0;

 protected:
  ~HaloComm() = default;  // not deleted through this interface
};
void set_halo_comm(HaloComm* comm);  // nullptr: none
