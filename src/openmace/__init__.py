"""openmace: MACE interatomic potentials."""
