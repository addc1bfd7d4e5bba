"""Data on the ranks: read once on rank 0, inputs to each group's first layer rank, targets to its last."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..runtime import tags
from ..runtime.comm import Comm
from .dataset import Dataset, infer_task, load_npz
from .examples import load_dataset


class RankData:
    """The data a rank needs: inputs on the first rank of every data group, targets on the last (with
    ``both_ends``, each on both), sizes everywhere; each group trains and scores on its share of
    every batch.  ``world``: every rank; ``layer_comm``: the ranks of this data group (one per layer
    block); ``group_comm``: the ranks holding this rank's layer block in every data group."""

    def __init__(self, world: Comm, layer_comm: Comm, group_comm: Comm, be, meta, ds, both_ends: bool = False):
        L, D = layer_comm.size, group_comm.size
        # the layer ranks of a group that take the inputs and the targets (both ends: the Chimera pipeline)
        takes_x, takes_y = ({0, L - 1}, {0, L - 1}) if both_ends else ({0}, {L - 1})
        self.n_train, self.n_val = meta["n_train"], meta["n_val"]
        self.group, self.groups = group_comm.rank, D
        self.x_train = self.x_val = self.y_train = self.y_val = None
        inputs = (ds.x_train, ds.x_val) if world.rank == 0 else None
        targets = (ds.y_train, ds.y_val) if world.rank == 0 else None
        if world.rank == 0:  # world rank 0 read the data: it is the first rank of group 0
            for g in range(D):
                for r in sorted(takes_x):
                    if g * L + r:
                        world.send_obj(inputs, g * L + r, tags.DATA_INPUTS)
                for r in sorted(takes_y):
                    if g * L + r:
                        world.send_obj(targets, g * L + r, tags.DATA_TARGETS)
        else:
            if layer_comm.rank in takes_x:
                inputs = world.recv_obj(0, tags.DATA_INPUTS)
            if layer_comm.rank in takes_y:
                targets = world.recv_obj(0, tags.DATA_TARGETS)
        if layer_comm.rank in takes_x:
            self.x_train, self.x_val = be.asarray(inputs[0]), be.asarray(inputs[1])
        if layer_comm.rank in takes_y:  # labels stay integers; regression targets take the backend's dtype
            put = be.xp.asarray if meta["task"] == "classification" else be.asarray
            self.y_train, self.y_val = put(targets[0]), put(targets[1])

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This data group's part of the sample indices ``idx`` (contiguous, as even as possible)."""
        return np.array_split(idx, self.groups)[self.group] if self.groups > 1 else idx

    def take(self, split: str, idx: np.ndarray | None, xp):
        """(x, y, B) of the samples ``idx`` of ``split`` that this group handles (None: all)."""
        x, y, n = ((self.x_train, self.y_train, self.n_train) if split == "train"
                   else (self.x_val, self.y_val, self.n_val))
        if idx is None and self.groups == 1:
            return x, y, n
        idx = self.share(np.arange(n) if idx is None else idx)
        sel = xp.asarray(idx)
        return None if x is None else x[sel], None if y is None else y[sel], len(idx)


def _read(cfg, user_data) -> Dataset:
    """The training data set: ``user_data`` (a Dataset, or arrays (x_train, y_train[, x_val,
    y_val])), the .npz of ``cfg.data``, or the built-in example."""
    if isinstance(user_data, Dataset):
        return user_data
    task = None if cfg.task == "auto" else cfg.task
    if user_data is not None:
        if not isinstance(user_data, (tuple, list)) or len(user_data) not in (2, 4):
            raise UserError("data must be a gpubraid.data.dataset.Dataset or arrays (x_train, y_train[, x_val, y_val])")
        return Dataset.from_arrays(*user_data, task=task or infer_task(user_data[1]), seed=cfg.seed,
                                   normalize=cfg.normalize)
    if cfg.data is not None:
        return load_npz(cfg.data, task=task, seed=cfg.seed, normalize=cfg.normalize)
    return load_dataset(cfg.example, seed=cfg.seed, data_dir=cfg.data_dir, n_train=cfg.n_train, n_val=cfg.n_val)


def load_distributed(cfg, comm: Comm, user_data=None):
    """Rank 0 reads the data set (``user_data``: a Dataset or arrays the caller gave, else what
    ``cfg`` names); every rank learns its description (:meth:`Dataset.meta`), or the same
    UserError.  ``cfg``: the run's TrainConfig (data, task, seed, normalize, example, ...)."""
    ds, meta, err = None, None, None
    if comm.rank == 0:
        try:
            ds = _read(cfg, user_data)
            meta = ds.meta()
        except UserError as exc:
            err = str(exc)
        except MemoryError:
            err = (f"n_train/n_val: not enough memory for the requested samples (n_train={cfg.n_train}, "
                   f"n_val={cfg.n_val})")
    meta, err = comm.bcast_obj((meta, err), 0)
    if err is not None:
        raise UserError(err)
    return ds, meta
