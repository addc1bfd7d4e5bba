"""Kernel sources of gpubraid, shipped inside the wheel as the package data of ``gpubraid._kernels``: the CUDA
steps (``*.cu``, ``*.cuh``, compiled by NVRTC) and the host kernels (``dense_host.c`` with ``dense_host.h``, the
classifier head's ``head_host.h`` and the dense opening's ``opening_host.h``, compiled by the system C compiler)."""
