"""gpubraid: layer-parallel training of deep residual networks by multigrid reduction in time."""
__version__ = "0.1.0"


def load(path: str, backend=None, *, step=None, trust: bool = False):
    """A trained model from a file written by ``gpubraid train --save`` (or ``Trainer.save``):
    ``predict(x)``, ``predict_proba(x)``; see :mod:`gpubraid.io.modelfile`.  ``backend``: a
    :class:`~gpubraid.runtime.backend.Backend` or ``"numpy"`` (default), ``"cupy"``, ``"auto"``.

    A model whose step is not built in (a user step or torch module) needs ``step=`` (the step,
    its class or factory, or the ``torch.nn.Module`` class); ``trust=True`` instead imports the
    path the file names, which runs code: only for files you trust."""
    from .io.modelfile import load as _load

    return _load(path, backend, step=step, trust=trust)
