"""wsram: stochastic hard-attention models trained by WS-RAM, VAR and VIMCO."""

import os

# Before torch loads its OpenMP runtime (libgomp): idle OpenMP workers spin only briefly
# (GOMP_SPINCOUNT 1,000) before they sleep. libgomp's default spins about 300 times longer;
# when other processes use the same cores, the spinning workers take the cores from the
# threads that have work (two 2-thread trainings on 2 cores: each at 20% of its speed
# alone). Not spinning at all (OMP_WAIT_POLICY=PASSIVE) cost about a quarter of the speed
# on a quiet machine; 1,000 keeps the quiet speed and 60% when shared (docs/performance.md,
# section 7). A value set by the user (either variable) wins; this does nothing if torch
# was imported before wsram.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
