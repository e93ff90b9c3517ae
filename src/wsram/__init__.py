"""wsram: stochastic hard-attention models trained by WS-RAM, VAR and VIMCO."""

import os

# Before torch loads its OpenMP runtime (libgomp): idle OpenMP workers spin only briefly
# (GOMP_SPINCOUNT 1,000) before they sleep. libgomp's default spins about 300 times longer;
# when other processes use the same cores, the spinning workers take the cores from the
# threads that have work (two 2-thread trainings on 2 cores: each at 20% of its speed
# alone). Measured in interleaved rounds (docs/performance.md, section 9): 1,000 keeps 54%
# of the speed when shared, at about 5% of the quiet speed against a spin of 10,000 (no
# loss measurable against libgomp's own); not spinning at all (OMP_WAIT_POLICY=PASSIVE)
# keeps 72% shared but costs about 9% quiet. A value set by the user (either variable)
# wins, e.g. GOMP_SPINCOUNT=10000 on a machine of one's own; this does nothing if torch
# was imported before wsram.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
