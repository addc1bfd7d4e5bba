"""Kernel sources of gpubraid, shipped inside the wheel as the package data of ``gpubraid._kernels``: the CUDA
steps (``*.cu``, ``*.cuh``, compiled by NVRTC) and the host sweeps (``dense_host.c``, ``dense_host.h``, compiled by
the system C compiler)."""
