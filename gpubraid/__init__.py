"""gpubraid: layer-parallel training of deep residual networks by multigrid reduction in time."""
__version__ = "0.1.0"
