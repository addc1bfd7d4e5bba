"""State dicts of :class:`gpubraid.torch.LayerParallel` in the serial layout, on any rank count.

``state_dict()`` gives every stacked layer group as one (N, *shape) tensor, all N layers gathered
from the ranks, on every rank; ``load_state_dict()`` takes such tensors on every rank and keeps this
rank's rows [a, b).  So a state dict saved on P ranks loads on Q ranks.  Both are collective: call
them on every rank of the module's communicator.  Modules marked with
:meth:`~gpubraid.torch.LayerParallel.on_first` / :meth:`~gpubraid.torch.LayerParallel.on_last`
(an opening built on every rank but used on the first, a head used on the last) give the entries of
the rank that uses them, so the state dict of a whole model is the same on every rank.

The layer groups carry the names and shapes of a gpubraid model file's residual layers (the
block's parameter names with ``.`` as ``_``, (N, *shape)): :func:`layer_tensors` reads a model file
(e.g. from ``gpubraid train --layer mypkg:Block --save model.safetensors``) for ``load_state_dict``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError


def _host(t) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


def install(lp) -> None:
    """Register the gather (state_dict) and scatter (load_state_dict) hooks on ``lp``."""

    def gather(module, state_dict, prefix, local_metadata):
        comm = module.comm
        for name in module.group_names:
            key = prefix + name
            local = state_dict[key]
            parts = [_host(local)] if comm.size == 1 else comm.comm.allgather(_host(local))
            full = torch.from_numpy(np.concatenate(parts)).to(device=local.device, dtype=local.dtype)
            state_dict[key] = full

    def scatter(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name, shape in zip(module.group_names, module.group_shapes):
            key = prefix + name
            if key not in state_dict:
                continue
            t = state_dict[key]
            want = (module.layers, *shape)
            if tuple(t.shape) != want:
                error_msgs.append(f"{key}: the serial layout has shape {want} (all {module.layers} layers); "
                                  f"got {tuple(t.shape)}")
                continue
            state_dict[key] = t[module.a:module.b]

    lp.register_state_dict_post_hook(gather)
    lp.register_load_state_dict_pre_hook(scatter)


def owned_by(lp, module: torch.nn.Module, root: int) -> torch.nn.Module:
    """Make ``module``'s state dict entries those of rank ``root`` on every rank of ``lp.comm``."""
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"on_first/on_last take a torch.nn.Module; got {type(module).__name__}")

    def from_root(mod, state_dict, prefix, local_metadata):
        comm = lp.comm
        if comm.size == 1:
            return
        keys = sorted(k for k in state_dict if k.startswith(prefix))
        values = comm.comm.bcast({k: _host(state_dict[k]) for k in keys} if comm.rank == root else None, root=root)
        if sorted(values) != keys:
            raise UserError(f"the module {type(mod).__name__} must be built alike on every rank; rank {root} "
                            f"has entries {sorted(values)}, rank {comm.rank} {keys}")
        for k in keys:
            local = state_dict[k]
            state_dict[k] = torch.from_numpy(values[k]).to(device=local.device, dtype=local.dtype)

    module.register_state_dict_post_hook(from_root)
    return module


def layer_tensors(path: str, dtype=None) -> dict:
    """The residual-layer groups of a gpubraid model file as tensors (N, *shape), for
    ``LayerParallel.load_state_dict`` (``dtype``: default torch's)."""
    from ..io.modelfile import read

    tensors, meta = read(path)
    names = list((meta.get("network") or {}).get("param_shapes") or {})
    if not names:
        raise UserError(f"{path!r} records no residual-layer groups")
    dtype = dtype or torch.get_default_dtype()
    return {n: torch.as_tensor(np.asarray(tensors[n]), dtype=dtype) for n in names}
