"""The runtime every layer above builds on: array backend (NumPy/CuPy), MPI communication, CUDA
kernel launchers, interrupts, resource checks, profiling, atomic files.  Knows nothing of MGRIT,
networks or training."""
