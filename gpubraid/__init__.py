"""gpubraid: layer-parallel training of deep residual networks by multigrid reduction in time."""
__version__ = "0.1.0"


def load(path: str, backend=None):
    """A trained model from a file written by ``gpubraid train --save`` (or ``Trainer.save``):
    ``predict(x)``, ``predict_proba(x)``; see :mod:`gpubraid.io.modelfile`."""
    from .io.modelfile import load as _load

    return _load(path, backend)
