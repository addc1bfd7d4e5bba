"""What a training run returns (:class:`TrainResult`, the metrics JSON) and its printed summary."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from .. import __version__
from ..runtime.atomic import write_output
from .config import EXAMPLE_DEFAULTS, TrainConfig  # noqa: F401  (re-exported for users)


@dataclass
class TrainResult:
    """What a run produced (identical on every rank).  Accuracies are None for regression."""

    config: dict
    ranks: int
    backend: str
    dtype: str
    objective: float
    train_loss: float
    val_loss: float
    train_accuracy: float | None
    val_accuracy: float | None
    wall_s: float
    history: list = field(default_factory=list)
    stopped: str = "iterations"
    depth_history: list = field(default_factory=list)  # the coarse networks' steps (--depth-levels)
    plan: dict | None = None  # --method auto: the planner's choice, why, and the candidates
    level_cap: dict | None = None  # oneshot: the levels capped for the layer ranks (levels_for_ranks)

    def metrics(self) -> dict:
        return {"method": self.config["method"], "ranks": self.ranks, "backend": self.backend,
                "dtype": self.dtype, "layers": self.config["layers"], "iterations": len(self.history),
                "objective": self.objective, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "train_accuracy": self.train_accuracy, "val_accuracy": self.val_accuracy,
                "wall_s": self.wall_s, "stopped": self.stopped, "example": self.config["example"],
                "data": self.config["data"], "optimizer": self.config["optimizer"],
                "version": __version__, "config": self.config, "history": self.history,
                "depth_history": self.depth_history, "plan": self.plan, "level_cap": self.level_cap}


def write_metrics(path: str, result: TrainResult) -> None:
    """The run's metrics as JSON in ``path``, never half-written (WriteError naming ``metrics``)."""
    write_output("metrics", path, json.dumps(result.metrics(), indent=1, default=float))


def print_summary(res: TrainResult, file=None, saved: bool = True) -> None:
    """The run's summary lines (default: on the current ``sys.stdout``); ``saved=False``: the
    model file could not be written, so it is not named."""
    file = file if file is not None else sys.stdout
    c = res.config
    schedule = f" ({c['schedule']})" if c["method"] == "pipeline" and c.get("schedule", "1f1b") != "1f1b" else ""
    print(f"gpubraid {c['method']}{schedule} training of {c['example'] or c['data']}: {c['layers']} layers x "
          f"{c['channels']} channels, {res.ranks} rank(s), {res.backend}/{res.dtype}", file=file)
    print(f"  iterations      {len(res.history)}  ({res.stopped})", file=file)
    print(f"  objective       {res.objective:.6g}", file=file)
    if res.train_accuracy is None:
        print(f"  train loss      {res.train_loss:.6g}", file=file)
        print(f"  val loss        {res.val_loss:.6g}", file=file)
    else:
        print(f"  train accuracy  {res.train_accuracy:.4f}", file=file)
        print(f"  val accuracy    {res.val_accuracy:.4f}", file=file)
    print(f"  wall time       {res.wall_s:.1f} s", file=file)
    if c["save"] and saved:
        print(f"  model           {c['save']}", file=file)
