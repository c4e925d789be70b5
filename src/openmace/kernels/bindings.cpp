// Python bindings of the compiled CPU kernels (one extension module for all sources here).

#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pooled_forward", &pooled_forward, "fused pooled edge messages (edge_messages.cpp)");
  m.def("pooled_backward", &pooled_backward, "their gradients");
  m.def("contraction_forward", &contraction_forward, "symmetric contraction (contraction.cpp)");
  m.def("contraction_backward", &contraction_backward, "its gradient");
}
