"""CUDA sources of gpubraid, shipped inside the wheel as the package data of ``gpubraid._kernels``."""
