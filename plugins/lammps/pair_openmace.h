/* pair_style openmace: MACE potentials exported by openmace (`openmace export --lammps`).

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#ifndef OPENMACE_PAIR_OPENMACE_H
#define OPENMACE_PAIR_OPENMACE_H

#include "pair.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairOpenMACE : public Pair {
 public:
  explicit PairOpenMACE(class LAMMPS *);
  ~PairOpenMACE() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  void allocate();
  void load_model(const std::string &path);
  bool whole_periodic_box() const;
  void compute_ghosts();
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
  std::vector<std::string> symbols_;     // the model's elements
  std::vector<int64_t> numbers_;         // and their atomic numbers
  std::vector<int64_t> type_number_;     // LAMMPS type (1-based) -> atomic number
  std::string path_;
};

}  // namespace LAMMPS_NS

#endif
