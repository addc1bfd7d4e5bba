"""Layer-parallel residual layers inside any PyTorch training script (needs ``pip install 'gpubraid[torch]'``).

    from gpubraid.torch import LayerParallel
    lp = LayerParallel(Block, layers=16, final_time=2.0, comm=MPI.COMM_WORLD, method="exact")

See :class:`~gpubraid.torch.layer_parallel.LayerParallel` and the README, "In your PyTorch script".
"""
from .layer_parallel import LayerParallel
from .state import layer_tensors

__all__ = ["LayerParallel", "layer_tensors"]
