/* Registers pair_style openmace with LAMMPS (`plugin load libopenmace_lammps.so`).

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#include "lammpsplugin.h"
#include "pair_openmace.h"

#ifndef OPENMACE_LAMMPS_VERSION
#error "OPENMACE_LAMMPS_VERSION (the LAMMPS version string, e.g. \"22 Jul 2025\") is set by CMake"
#endif

using namespace LAMMPS_NS;

static void *create_pair_openmace(void *lmp)
{
  return new PairOpenMACE(static_cast<LAMMPS *>(lmp));
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = OPENMACE_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "openmace";
  plugin.info = "openmace: MACE interatomic potentials (openmace export --lammps)";
  plugin.author = "openmace developers";
  plugin.creator.v1 = &create_pair_openmace;
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
