"""Every MPI point-to-point tag of gpubraid, in one registry.

A message is matched by (communicator, source, tag).  Each kind of message has its own tag here, so
two kinds never match each other's receives, and tests/test_architecture.py checks that every send
and receive in the package takes its tag from this module.

Several arrays of one kind (one per parameter group or step-data array) share that kind's single
tag: MPI delivers messages of one (communicator, source, tag) in the order they were sent
(non-overtaking), and every sender sends them in the order the receiver receives them (group 0,
1, ...).  So the scheme holds for any number of groups; no tag is offset by a group index.

The only per-index range is the ghost exchange of the MGRIT levels, [GHOST, GHOST + MAX_LEVELS):
level l uses GHOST + l.  A hierarchy of N < 2^63 steps with coarsening factors ≥ 2 has at most 64
levels, so the range is never exceeded; it lies below every other tag above it.

    tag     communicator   messages
    1       world          data sets: inputs to each data group's first layer rank
    2       world          data sets: targets to each data group's last layer rank
    100+l   layers         MGRIT ghost row of level l (l < 64)
    200     layers         MGRIT setup: level-0 step data for the coarse levels
    300     layers         MGRIT coarsest solve: u_0 gathered to the root position
    410     layers         MGRIT interpolation (final_relax off): the last row and its correction
    600     layers         parameters θ_a of the first layer to the left neighbour (ddt regulariser)
    601     layers         parameters θ_{b−1} of the last layer to the right neighbour
    800     layers         inference (scoring, prediction, gpubraid.torch evaluation): a chunk's state to the next rank
    801     layers         inference: the predictions from the last rank to rank 0
    900     layers         layer-serial chain: the last state to the next position
    1000    layers         pipeline: a micro-batch's state u_b to the next rank
    1001    layers         pipeline: a micro-batch's adjoint λ_a to the previous rank
    1002    layers         Chimera pipeline: a rank's parameters to its mirror rank (P − 1 − r)
    1003    layers         Chimera pipeline: the mirror block's gradient part back to its owner

The coarsest solve's rows and step data (gathered to the root position and scattered back) move by
collectives (:meth:`~gpubraid.runtime.comm.Comm.gather_rows`), which take no tag.

All tags are far below 32767, the least upper bound (MPI_TAG_UB) that MPI guarantees.
"""
from __future__ import annotations

DATA_INPUTS = 1
DATA_TARGETS = 2

GHOST = 100
MAX_LEVELS = 64
STEP_DATA = 200
COARSE_U0 = 300
INTERP = 410

PARAMS_LEFT = 600
PARAMS_RIGHT = 601

CHUNK_STATE = 800
CHUNK_OUTPUTS = 801

CHAIN = 900

PIPE_STATE = 1000
PIPE_ADJOINT = 1001
PIPE_PARAMS = 1002
PIPE_GRADS = 1003


def ghost(level: int) -> int:
    """Tag of the ghost row of MGRIT level ``level`` (0 ≤ level < MAX_LEVELS)."""
    if not 0 <= level < MAX_LEVELS:
        raise ValueError(f"ghost tag for level {level}: levels are 0..{MAX_LEVELS - 1}")
    return GHOST + level
