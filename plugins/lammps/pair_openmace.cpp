/* pair_style openmace: MACE potentials exported by openmace (`openmace export --lammps`).

   pair_style openmace [device cpu|cuda] [comm exchange|shell] [threads N]
   pair_coeff * * model.pt El1 El2 ...        (one element symbol per LAMMPS atom type)

   One rank with a box periodic in every direction (compute_periodic): each ghost is a periodic
   image of a local atom, so the model evaluates the box's atoms with images as edge shifts (the
   ASE calculator's graph), and the virial is the model's strain derivative.

   Otherwise, on the CPU with a model file of the compiled operators (compute_exchange, the
   default): ghosts to r_max + skin, edges ending on local atoms (pairs of local atoms both
   ways, then ghost -> local one way: no message to a ghost is computed, the radial functions
   run once per pair or one-way edge), and between layers the ghosts' node features are
   replaced by their owners' through LAMMPS' forward communication (pack/unpack_forward_comm),
   their gradients added to the owners' by the reverse communication, inside the model's backward pass (torch.ops.openmace.halo_exchange calls
   forward() and reverse() below; openmace/model/halo.py). Each rank computes node updates of
   its own atoms only. Energy of local atoms, forces on local and ghost atoms, virial by fdotr
   as in the ghost shell below; fdotr stays exact because every exchanged feature is a
   translation-invariant function of positions: the position gradients it sends back to an
   owner sum to zero, so it does not matter in which image's frame they are multiplied by r.

   comm shell, device cuda, or a --reference model file (compute_ghosts): exact under domain
   decomposition by a ghost shell of the full receptive field: a MACE model
   with L message-passing layers of cutoff r_max gives each atom an energy that depends on the
   positions of atoms up to L * r_max away. Each rank therefore keeps ghost atoms out to
   L * r_max + skin (comm->cutghostuser), builds the graph of its local and ghost atoms from a
   full neighbour list that includes ghosts (neighbour lists of ghost atoms near the shell's
   outer edge are incomplete, which only changes features that no local energy depends on),
   evaluates the model, and takes the energy of its local atoms only:

       E_rank = sum over local atoms i of E_i,   F_k = -dE_rank / dr_k   for local and ghost k.

   With newton pair on, LAMMPS' reverse communication adds the forces on ghost atoms to their
   owners, so the total force on every atom is -dE/dr of the total energy. The global virial is
   -sum_k r_k (x) dE_rank/dr_k over local and ghost atoms (virial_fdotr_compute), which sums
   over ranks to the virial of the total energy. The price is the redundant work on ghost atoms
   (measured: benchmarks/lammps.py), which the exchange avoids.

   The model file holds a TorchScript module and the extra file lammps.txt (format below, written
   by openmace.io.lammps); forward(positions [n, 3], atomic_numbers [n], edge_index [2, e],
   num_local) returns energy [1] (eV, local atoms), node_energy [num_local] (eV) and forces
   [n, 3] (eV/Å), for LAMMPS units metal.

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#include "pair_openmace.h"

#include "lammpsplugin.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>

using namespace LAMMPS_NS;

// the lammps.txt format this plugin reads; openmace.io.lammps.INTERFACE_VERSION writes it
static constexpr int INTERFACE_VERSION = 4;

PairOpenMACE::PairOpenMACE(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;  // neighbour lists of ghost atoms (the graph reaches into the ghost shell)
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairOpenMACE::~PairOpenMACE()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairOpenMACE::allocate()
{
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  memory->create(cutghost, n + 1, n + 1, "pair:cutghost");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
}

void PairOpenMACE::settings(int narg, char **arg)
{
  for (int i = 0; i < narg; i += 2) {
    if (i + 1 >= narg) error->all(FLERR, "pair_style openmace: keyword {} needs a value", arg[i]);
    const std::string key = arg[i], value = arg[i + 1];
    if (key == "device") {
      if (value == "cpu") {
        device_ = torch::kCPU;
      } else if (value == "cuda") {
        if (!torch::cuda::is_available())
          error->all(FLERR, "pair_style openmace: device cuda requested but PyTorch sees no GPU");
        device_ = torch::Device(torch::kCUDA, 0);
      } else {
        error->all(FLERR, "pair_style openmace: device must be cpu or cuda, not {}", value);
      }
    } else if (key == "comm") {
      if (value != "exchange" && value != "shell")
        error->all(FLERR, "pair_style openmace: comm must be exchange or shell, not {}", value);
      shell_requested_ = value == "shell";
    } else if (key == "threads") {
      const int threads = utils::inumeric(FLERR, value, false, lmp);
      if (threads < 1) error->all(FLERR, "pair_style openmace: threads must be >= 1");
      at::set_num_threads(threads);
    } else {
      error->all(FLERR, "pair_style openmace: unknown keyword {} (keywords: device, comm, threads)",
                 key);
    }
  }
}

void PairOpenMACE::load_model(const std::string &path)
{
  if (!std::ifstream(path).good())
    error->all(FLERR, "pair_style openmace: model file {} not found or not readable", path);
  torch::jit::ExtraFilesMap extra{{"lammps.txt", ""}};
  try {
    model_ = torch::jit::load(path, device_, extra);
  } catch (const std::exception &e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    error->all(FLERR, "pair_style openmace: {} is not a model file openmace exported ({})", path,
               what);
  }
  model_.eval();
  std::istringstream text(extra["lammps.txt"]);
  std::map<std::string, std::string> fields;
  std::string line;
  while (std::getline(text, line)) {
    const auto space = line.find(' ');
    if (space != std::string::npos) fields[line.substr(0, space)] = line.substr(space + 1);
  }
  if (!fields.count("openmace-lammps"))
    error->all(FLERR,
               "pair_style openmace: {} was not written by openmace export --lammps (no "
               "lammps.txt inside: a plain TorchScript export?)",
               path);
  const int version = std::atoi(fields["openmace-lammps"].c_str());
  if (version != INTERFACE_VERSION)
    error->all(FLERR,
               "pair_style openmace: {} uses model interface version {}, this plugin reads "
               "version {}: rebuild the plugin (openmace lammps-plugin) with the openmace that "
               "exported the model, or export it again",
               path, version, INTERFACE_VERSION);
  if (device_.is_cuda() && fields["implementation"] == "operators")
    error->all(FLERR,
               "pair_style openmace: {} runs openmace's compiled CPU operators; for device cuda "
               "export it with openmace export --lammps --reference",
               path);
  r_max_ = std::atof(fields["r_max"].c_str());
  num_layers_ = std::atoi(fields["num_layers"].c_str());
  exchange_width_ = std::atoi(fields["exchange_width"].c_str());
  operators_ = fields["implementation"] == "operators";
  dtype_ = fields["dtype"] == "float32" ? torch::kFloat32 : torch::kFloat64;
  symbols_.clear();
  numbers_.clear();
  std::istringstream elements(fields["elements"]);
  std::string entry;
  while (elements >> entry) {  // symbol:Z
    const auto colon = entry.find(':');
    symbols_.push_back(entry.substr(0, colon));
    numbers_.push_back(std::atoll(entry.substr(colon + 1).c_str()));
  }
  if (r_max_ <= 0 || num_layers_ < 1 || symbols_.empty())
    error->all(FLERR, "pair_style openmace: {} has an incomplete lammps.txt", path);
  path_ = path;
  loaded_ = true;
}

void PairOpenMACE::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff * * MODEL.pt ELEMENTS: {} element symbols given for {} atom types "
               "(one per type)",
               narg - 3, ntypes);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_style openmace takes one pair_coeff * * MODEL.pt ELEMENTS");
  load_model(arg[2]);
  type_number_.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; t++) {
    const std::string symbol = arg[2 + t];
    int found = -1;
    for (size_t k = 0; k < symbols_.size(); k++)
      if (symbols_[k] == symbol) found = static_cast<int>(k);
    if (found < 0) {
      std::string known;
      for (const auto &s : symbols_) known += " " + s;
      error->all(FLERR, "pair_coeff: element {} (type {}) is not in model {} (elements:{})",
                 symbol, t, path_, known);
    }
    type_number_[t] = numbers_[found];
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairOpenMACE::init_style()
{
  if (force->newton_pair == 0) error->all(FLERR, "pair_style openmace requires newton pair on");
  if (!loaded_) error->all(FLERR, "pair_style openmace: no model (pair_coeff * * MODEL.pt ...)");
  // one rank with a fully periodic box: the model sees the box's atoms and their periodic
  // images as edge shifts (compute_periodic); exchange: ghosts to r_max + skin, their node
  // features communicated between layers; shell: ghost atoms out to the receptive field (plus
  // the skin: atoms move between rebuilds), with neighbour lists of their own
  const bool shell = !whole_periodic_box() && !use_exchange();
  ghostneigh = shell ? 1 : 0;
  neighbor->add_request(this, shell ? NeighConst::REQ_FULL | NeighConst::REQ_GHOST
                                    : NeighConst::REQ_FULL);
  no_virial_fdotr_compute = whole_periodic_box() ? 1 : 0;
  comm_forward = comm_reverse = use_exchange() ? exchange_width_ : 0;
  if (shell) {
    const double cut = num_layers_ * r_max_ + neighbor->skin;
    if (comm->cutghostuser < cut) comm->cutghostuser = cut;
  }
}

// the per-layer exchange: CPU, a model file with the operators (the exchange is one of them),
// unless pair_style ... comm shell
bool PairOpenMACE::use_exchange() const
{
  return operators_ && !device_.is_cuda() && !shell_requested_;
}

bool PairOpenMACE::whole_periodic_box() const
{
  return comm->nprocs == 1 && domain->xperiodic && domain->yperiodic && domain->zperiodic;
}

double PairOpenMACE::init_one(int i, int j)
{
  cutghost[i][j] = cutghost[j][i] = r_max_;
  return r_max_;
}

void PairOpenMACE::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair_style openmace does not compute per-atom virials (stress/atom)");
  if (whole_periodic_box())
    compute_periodic();
  else if (use_exchange())
    compute_exchange();
  else
    compute_ghosts();
}

// The model's method on ``inputs``; the named outputs as contiguous float64 CPU tensors. A
// failure inside the model is one LAMMPS error line.
std::vector<torch::Tensor> PairOpenMACE::run_model(const std::string &method,
                                                   std::vector<torch::jit::IValue> &inputs,
                                                   const std::vector<std::string> &names)
{
  // no graph optimisation: TorchScript's profiling executor re-specialises the graph whenever
  // the number of atoms or edges changes (every step in MD), which cost seconds per step
  torch::jit::GraphOptimizerEnabledGuard no_optimizer(false);
  std::vector<torch::Tensor> tensors;
  try {
    const auto out = model_.get_method(method)(inputs).toGenericDict();
    for (const auto &name : names)
      tensors.push_back(out.at(name).toTensor().to(torch::kCPU, torch::kFloat64).contiguous());
  } catch (const std::exception &e) {
    std::string what = e.what();
    error->one(FLERR, "pair_style openmace: the model failed: {}", what.substr(0, 2000));
  }
  return tensors;
}

void PairOpenMACE::add_results(const torch::Tensor &energy, const torch::Tensor &node_energy,
                               const torch::Tensor &forces, int count)
{
  double **f = atom->f;
  const double *fk = forces.data_ptr<double>();
  for (int i = 0; i < count; i++)
    for (int k = 0; k < 3; k++) f[i][k] += fk[3 * i + k];
  if (eflag_global) eng_vdwl += energy.item<double>();
  if (eflag_atom) {
    const double *e = node_energy.data_ptr<double>();
    for (int i = 0; i < atom->nlocal; i++) eatom[i] += e[i];
  }
}

// The edges of every pair closer than r_max in the neighbour lists of ilist[0..count) that
// keep(i, j) accepts (each pair once): sender j -> receiver i for every pair, then the reverse
// in the same order (the model then evaluates its radial functions once per pair). Pairs that
// one_way(i, j) marks come after those, as the single edge j -> i (the model reads this layout
// as pairs then one-way edges: openmace.data.graph.paired_edges)
template <typename Keep, typename OneWay>
static torch::Tensor pair_edges(NeighList *list, int count, double **x, double r_max, Keep keep,
                                OneWay one_way)
{
  std::vector<int64_t> first, second, to, from;
  const double cut2 = r_max * r_max;
  for (int ii = 0; ii < count; ii++) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (!keep(i, j)) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cut2) {
        const bool single = one_way(i, j);
        (single ? to : first).push_back(i);
        (single ? from : second).push_back(j);
      }
    }
  }
  const int64_t pairs = static_cast<int64_t>(first.size());
  const int64_t single = static_cast<int64_t>(to.size());
  const int64_t edges = 2 * pairs + single;
  auto edge_index = torch::empty({2, edges}, torch::kInt64);
  int64_t *senders = edge_index.data_ptr<int64_t>(), *receivers = senders + edges;
  for (int64_t p = 0; p < pairs; p++) {
    senders[p] = second[p];
    receivers[p] = first[p];
    senders[pairs + p] = first[p];
    receivers[pairs + p] = second[p];
  }
  for (int64_t p = 0; p < single; p++) {
    senders[2 * pairs + p] = from[p];
    receivers[2 * pairs + p] = to[p];
  }
  return edge_index;
}

template <typename Keep>
static torch::Tensor pair_edges(NeighList *list, int count, double **x, double r_max, Keep keep)
{
  return pair_edges(list, count, x, r_max, keep, [](int, int) { return false; });
}

// the atomic numbers of atoms 0..n-1 (from their LAMMPS types)
torch::Tensor PairOpenMACE::atomic_numbers(int n) const
{
  auto numbers = torch::empty({n}, torch::kInt64);
  int64_t *z = numbers.data_ptr<int64_t>();
  for (int i = 0; i < n; i++) z[i] = type_number_[atom->type[i]];
  return numbers;
}

// One rank, fully periodic box: the ASE calculator's graph. Each ghost is an image of a local
// atom (found by its tag); an edge to a ghost becomes an edge to its owner with the lattice
// translation between them, and the virial comes from the model's strain derivative.
void PairOpenMACE::compute_periodic()
{
  const int nlocal = atom->nlocal;
  double **x = atom->x;
  const tagint *tag = atom->tag;
  std::unordered_map<tagint, int> owner;
  owner.reserve(2 * nlocal);
  for (int i = 0; i < nlocal; i++) owner[tag[i]] = i;
  const double *h = domain->h, *h_inv = domain->h_inv;  // h: xx yy zz yz xz xy
  const double cut2 = r_max_ * r_max_;
  // canonical half of the directed edges (receiver i, sender o, image n); the rest reversed
  std::vector<int64_t> recv, send, shift;
  for (int ii = 0; ii < list->inum; ii++) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cut2) continue;
      const auto found = owner.find(tag[j]);
      if (found == owner.end()) error->one(FLERR, "pair_style openmace: ghost without owner");
      const int o = found->second;
      const double d0 = x[j][0] - x[o][0], d1 = x[j][1] - x[o][1], d2 = x[j][2] - x[o][2];
      const int64_t n[3] = {std::llround(h_inv[0] * d0 + h_inv[5] * d1 + h_inv[4] * d2),
                            std::llround(h_inv[1] * d1 + h_inv[3] * d2),
                            std::llround(h_inv[2] * d2)};
      const bool first = i < o || (i == o && (n[0] > 0 || (n[0] == 0 && (n[1] > 0 ||
                                                                          (n[1] == 0 && n[2] > 0)))));
      if (!first) continue;
      recv.push_back(i);
      send.push_back(o);
      for (int k = 0; k < 3; k++) shift.push_back(-n[k]);  // vector = r_i - (r_o + n cell)
    }
  }
  const int64_t pairs = static_cast<int64_t>(recv.size());
  auto edge_index = torch::empty({2, 2 * pairs}, torch::kInt64);
  auto unit_shifts = torch::empty({2 * pairs, 3}, torch::kFloat64);
  int64_t *senders = edge_index.data_ptr<int64_t>(), *receivers = senders + 2 * pairs;
  double *s = unit_shifts.data_ptr<double>();
  for (int64_t p = 0; p < pairs; p++) {
    senders[p] = send[p];
    receivers[p] = recv[p];
    senders[pairs + p] = recv[p];
    receivers[pairs + p] = send[p];
    for (int k = 0; k < 3; k++) {
      s[3 * p + k] = static_cast<double>(shift[3 * p + k]);
      s[3 * (pairs + p) + k] = -static_cast<double>(shift[3 * p + k]);
    }
  }
  const auto numbers = atomic_numbers(nlocal);
  // cell rows a, b, c (LAMMPS' restricted triclinic box)
  auto cell = torch::tensor({h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]}, torch::kFloat64)
                  .reshape({3, 3});
  auto positions = torch::from_blob(x[0], {nlocal, 3}, torch::kFloat64);
  std::vector<torch::jit::IValue> inputs{positions.to(device_, dtype_), numbers.to(device_),
                                         cell.to(device_, dtype_), edge_index.to(device_),
                                         unit_shifts.to(device_, dtype_)};
  const auto out = run_model("periodic", inputs, {"energy", "node_energy", "forces", "virials"});
  add_results(out[0], out[1], out[2], nlocal);
  if (vflag_global) {
    const double *w = out[3].data_ptr<double>();  // [3, 3], -dE/dstrain
    virial[0] += w[0];
    virial[1] += w[4];
    virial[2] += w[8];
    virial[3] += w[1];
    virial[4] += w[2];
    virial[5] += w[5];
  }
}

// Any number of ranks, any box: the model on local and ghost atoms (see the top of this file)
void PairOpenMACE::compute_ghosts()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const int count = list->inum + list->gnum;
  const int *ilist = list->ilist;

  // each pair closer than r_max once (from the list of its lower index, or of the atom that
  // has a list)
  std::vector<char> has_list(nall, 0);
  for (int ii = 0; ii < count; ii++) has_list[ilist[ii]] = 1;
  const auto edge_index = pair_edges(list, count, x, r_max_,
                                     [&](int i, int j) { return !(j < i && has_list[j]); });
  const auto numbers = atomic_numbers(nall);
  auto positions = torch::from_blob(x[0], {nall, 3}, torch::kFloat64);

  std::vector<torch::jit::IValue> inputs{positions.to(device_, dtype_), numbers.to(device_),
                                         edge_index.to(device_), static_cast<int64_t>(nlocal)};
  const auto out = run_model("forward", inputs, {"energy", "node_energy", "forces"});
  add_results(out[0], out[1], out[2], nall);
  if (vflag_fdotr) virial_fdotr_compute();
}

// Any number of ranks, CPU: ghosts to r_max + skin; the edges of every pair closer than r_max
// with a local atom (local pairs once, then reversed, then ghost -> local); the model replaces
// the ghosts' node features by their owners' before every layer after the first, through
// forward() and reverse() below (openmace/model/halo.py)
void PairOpenMACE::compute_exchange()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  // a local pair from the lower index's list, both ways; a pair with a ghost from the local
  // atom's, one way (ghost -> local: the model computes node updates of local atoms only)
  const auto edge_index = pair_edges(
      list, list->inum, x, r_max_, [&](int i, int j) { return !(j < nlocal && j < i); },
      [&](int, int j) { return j >= nlocal; });
  const auto numbers = atomic_numbers(nall);
  auto owners = torch::full({nall}, -1, torch::kInt64);  // -1: from LAMMPS' communication
  int64_t *o = owners.data_ptr<int64_t>();
  for (int i = 0; i < nlocal; i++) o[i] = i;
  auto positions = torch::from_blob(x[0], {nall, 3}, torch::kFloat64);
  std::vector<torch::jit::IValue> inputs{positions.to(dtype_), numbers, edge_index,
                                         static_cast<int64_t>(nlocal), owners};
  struct Installed {  // the communication, for this model call only
    explicit Installed(HaloComm *comm) { set_halo_comm(comm); }
    ~Installed() { set_halo_comm(nullptr); }
  } installed(this);
  const auto out = run_model("exchange", inputs, {"energy", "node_energy", "forces"});
  add_results(out[0], out[1], out[2], nall);
  if (vflag_fdotr) virial_fdotr_compute();
}

// rows [local + ghost, width] of the model's features: LAMMPS' communication reads and writes
// them through pack/unpack below while they are installed here
void PairOpenMACE::communicate(torch::Tensor rows, bool reverse)
{
  if (rows.size(0) != atom->nlocal + atom->nghost)
    error->one(FLERR, "pair_style openmace: exchanged features of {} atoms, not local + ghost",
               rows.size(0));
  width_ = static_cast<int>(rows.size(1));
  if (width_ > comm_forward)
    error->one(FLERR, "pair_style openmace: {} floats per atom exceed the model's width {}",
               width_, comm_forward);
  rows_ = rows.data_ptr<double>();
  if (reverse)
    comm->reverse_comm(this, width_);
  else
    comm->forward_comm(this, width_);
  rows_ = nullptr;
}

void PairOpenMACE::forward(torch::Tensor rows) { communicate(rows, false); }

void PairOpenMACE::reverse(torch::Tensor rows) { communicate(rows, true); }

int PairOpenMACE::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  for (int i = 0; i < n; i++)
    std::memcpy(buf + static_cast<size_t>(i) * width_, rows_ + static_cast<size_t>(list[i]) * width_,
                sizeof(double) * width_);
  return n * width_;
}

void PairOpenMACE::unpack_forward_comm(int n, int first, double *buf)
{
  std::memcpy(rows_ + static_cast<size_t>(first) * width_, buf,
              sizeof(double) * width_ * static_cast<size_t>(n));
}

int PairOpenMACE::pack_reverse_comm(int n, int first, double *buf)
{
  std::memcpy(buf, rows_ + static_cast<size_t>(first) * width_,
              sizeof(double) * width_ * static_cast<size_t>(n));
  return n * width_;
}

void PairOpenMACE::unpack_reverse_comm(int n, int *list, double *buf)
{
  for (int i = 0; i < n; i++) {
    double *row = rows_ + static_cast<size_t>(list[i]) * width_;
    const double *add = buf + static_cast<size_t>(i) * width_;
    for (int k = 0; k < width_; k++) row[k] += add[k];
  }
}

// called by the loader (openmace_plugin.cpp) after it opened this library
extern "C" void openmace_register(void *lmp, void *handle, void *regfunc, const char *version)
{
  lammpsplugin_t plugin;
  plugin.version = version;
  plugin.style = "pair";
  plugin.name = "openmace";
  plugin.info = "openmace: MACE interatomic potentials (openmace export --lammps)";
  plugin.author = "openmace developers";
  plugin.creator.v1 = [](void *instance) -> void * {
    return new PairOpenMACE(static_cast<LAMMPS *>(instance));
  };
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
