/* pair_style openmace: MACE potentials exported by openmace (`openmace export --lammps`).

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#ifndef OPENMACE_PAIR_OPENMACE_H
#define OPENMACE_PAIR_OPENMACE_H

#include "pair.h"

#include "kernels.h"  // HaloComm (src/openmace/kernels)

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairOpenMACE : public Pair, public HaloComm {
 public:
  explicit PairOpenMACE(class LAMMPS *);
  ~PairOpenMACE() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  // HaloComm: node features between layers, through LAMMPS' forward and reverse communication
  void forward(torch::Tensor rows) override;
  void reverse(torch::Tensor rows) override;

 private:
  void allocate();
  void load_model(const std::string &path);
  bool whole_periodic_box() const;
  void compute_ghosts();
  void compute_exchange();
  void communicate(torch::Tensor rows, bool reverse);
  bool use_exchange() const;
  torch::Tensor atomic_numbers(int n) const;
  void compute_periodic();
  std::vector<torch::Tensor> run_model(const std::string &method,
                                       std::vector<torch::jit::IValue> &inputs,
                                       const std::vector<std::string> &names);
  void add_results(const torch::Tensor &energy, const torch::Tensor &node_energy,
                   const torch::Tensor &forces, int count);

  torch::jit::Module model_;
  bool loaded_ = false;
  torch::Device device_ = torch::kCPU;
  torch::Dtype dtype_ = torch::kFloat64;
  double r_max_ = 0.0;
  int num_layers_ = 0;
  int exchange_width_ = 0;        // floats per atom exchanged between layers (0: no exchange)
  bool operators_ = false;         // the model file runs the compiled operators
  bool shell_requested_ = false;  // comm shell: the ghost shell even where exchange works
  double *rows_ = nullptr;        // the features being communicated, [nall, width_]
  int width_ = 0;
  std::vector<std::string> symbols_;     // the model's elements
  std::vector<int64_t> numbers_;         // and their atomic numbers
  std::vector<int64_t> type_number_;     // LAMMPS type (1-based) -> atomic number
  std::string path_;
};

}  // namespace LAMMPS_NS

#endif
