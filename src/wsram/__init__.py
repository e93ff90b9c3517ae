"""wsram: stochastic hard-attention models trained by WS-RAM, VAR and VIMCO."""

import os

# Before torch loads its OpenMP runtime (libgomp): idle OpenMP workers sleep instead of
# spinning. libgomp's default is to spin about 3 ms before sleeping; when other processes
# use the same cores, the spinning workers take the cores from the threads that have work,
# and a 2-thread training on 2 busy cores ran 4 to 35 times slower than with one thread
# (docs/performance.md, section 6). A value set by the user wins; this does nothing if
# torch was imported before wsram.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
