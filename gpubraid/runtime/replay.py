"""The wall time a traced run would take with one core or GPU per rank: a discrete-event replay.

A trace (:mod:`gpubraid.runtime.trace`) holds each rank's compute spans and communication calls in
order.  The replay gives every rank its own clock, starting at 0 for all (tracing starts after a
barrier), and advances it event by event:

* compute span: its recorded length (thread CPU time, or wall time for GPU traces);
* send: the call's own recorded cost; the message departs when the call returns;
* receive: completes at max(posted, departed + x(n)) + o (eager, n ≤ ``eager_limit``), x(n) the
  transfer time of n bytes (α + n/β, or interpolated in a measured table); a larger message starts
  moving only once both sides are there: max(posted, departed) + x(n) + o; and
  without asynchronous progress (``async_progress`` False, e.g. MPICH over shared memory) only
  once the sender is inside an MPI call again at or after the receive was posted;
* wait for sends: eager sends are complete; a rendezvous send completes when its message arrived;
* collective over P ranks: every member leaves at (last arrival) + cost + o, with cost
  ⌈log2 P⌉·x(n) for allreduce and bcast, ⌈log2 P⌉·x(0) + (P − 1)·(x(n) − x(0)) for allgather,
  gather and scatter (⌈log2 P⌉·α + (P − 1)·n/β with x = α + n/β; with a measured table, the
  blocks priced as its messages), ⌈log2 P⌉·α for a barrier (n: bytes per rank);
* mark (e.g. the end of a training iteration): no time; the k-th mark of a label is passed when
  every rank that makes it has reached it (:attr:`Result.marks`).

α, β (or the table), o and the eager limit are a :class:`NetworkModel`.  The predicted wall time is the latest
rank's end; every rank's time splits into compute (busy), comm (call costs) and wait (blocked), and
the critical path (the chain of events that determines the end, across ranks) into compute and
communication.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class NetworkModel:
    """A latency/bandwidth model of the links between ranks.

    latency_s: α, one-way time of an empty message (s); bandwidth_Bps: β (bytes/s);
    overhead_s: o, time a receive, wait or collective call keeps its rank busy (s);
    eager_limit: messages of more bytes wait for their receive to be posted (rendezvous);
    async_progress: whether such a message moves while its sender computes (RDMA) or only while
    the sender is inside an MPI call;
    transfer_table: ((nbytes, seconds), ...) measured times from departure to arrival, sizes
    ascending (``bench.pingpong``), used instead of α + n/β: one protocol's line does not fit all
    sizes (MPICH over shared memory moves 20 MB at about twice its rate at 2 MiB).
    """

    name: str
    latency_s: float
    bandwidth_Bps: float
    overhead_s: float = 0.0
    eager_limit: int = 1 << 62
    async_progress: bool = True
    transfer_table: tuple = ()

    def __post_init__(self):
        for name, low in (("latency_s", 0.0), ("overhead_s", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        b = self.bandwidth_Bps
        if not isinstance(b, (int, float)) or math.isnan(b) or b <= 0:
            raise ValueError(f"bandwidth_Bps must be a number > 0 (inf: free); got {b!r}")
        if not isinstance(self.eager_limit, int) or self.eager_limit < 0:
            raise ValueError(f"eager_limit must be an integer >= 0; got {self.eager_limit!r}")
        try:
            table = tuple((p[0], p[1]) for p in self.transfer_table if len(p) == 2)
            ok = len(table) == len(self.transfer_table) != 1 and all(
                isinstance(n, int) and n >= 0 and isinstance(t, (int, float)) and math.isfinite(t) and t >= 0
                for n, t in table) and all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(table, table[1:]))
        except TypeError:
            ok = False
        if not ok:
            raise ValueError("transfer_table must be empty or two or more (nbytes, seconds) pairs, sizes ascending "
                             f"integers >= 0, seconds finite, >= 0 and not decreasing; got {self.transfer_table!r}")
        object.__setattr__(self, "transfer_table", table)

    def transfer(self, nbytes: int) -> float:
        """Seconds from departure to arrival of an ``nbytes`` message: α + n/β, or with a table
        linear between its sizes, its first time below them, the last segment's line above."""
        table = self.transfer_table
        if not table:
            return self.latency_s + nbytes / self.bandwidth_Bps
        if nbytes <= table[0][0]:
            return table[0][1]
        k = next((i for i in range(1, len(table)) if table[i][0] >= nbytes), len(table) - 1)
        (n0, t0), (n1, t1) = table[k - 1], table[k]
        return t0 + (nbytes - n0) * (t1 - t0) / (n1 - n0)

    def collective(self, kind: str, nbytes: int, members: int) -> float:
        """Seconds a collective ``kind`` over ``members`` ranks takes after its last arrival."""
        steps = math.ceil(math.log2(members)) if members > 1 else 0
        if kind in ("allgather", "gather", "scatter"):  # log2 P latencies, P − 1 blocks moved
            start = self.transfer(0)
            return steps * start + (members - 1) * (self.transfer(nbytes) - start)
        if kind == "barrier":
            return steps * self.latency_s
        return steps * self.transfer(nbytes)

    @classmethod
    def from_json(cls, path: str) -> "NetworkModel":
        """The model measured by ``python -m bench.pingpong`` (its ``"network"`` entry); ValueError
        (or OSError) when the file holds none."""
        with open(path) as f:
            doc = json.load(f)
        net = doc.get("network") if isinstance(doc, dict) else None
        if not isinstance(net, dict):
            raise ValueError(f"{path!r} has no 'network' object")
        try:
            return cls(**net)
        except TypeError as exc:  # missing or unknown fields
            raise ValueError(str(exc)) from None


#: Documented parameters.  ``ib``: InfiniBand HDR (200 Gb/s, ~25 GB/s achievable, MPI latency
#: ~1.5 µs between hosts; UCX switches to rendezvous near 16 KiB).  ``nvlink``: GPUs of one node over
#: NVLink 3 (A100: 300 GB/s per direction; CUDA-aware MPI latency a few µs).  ``o`` = 1 µs, the cost
#: of an mpi4py call on a current CPU.  ``ideal``: free communication (the compute-bound limit).
PRESETS = {
    "ib": NetworkModel("InfiniBand HDR", 1.5e-6, 25e9, 1e-6, 16384),
    "nvlink": NetworkModel("NVLink 3", 3e-6, 300e9, 1e-6, 16384),
    "ideal": NetworkModel("ideal", 0.0, math.inf, 0.0),
}


@dataclass
class RankTime:
    """One rank's replayed time (s): compute + comm + wait = end."""

    rank: int
    compute_s: float = 0.0
    comm_s: float = 0.0
    wait_s: float = 0.0
    end_s: float = 0.0


@dataclass
class CriticalPath:
    """The chain of events that ends last: its compute and communication seconds (they add up to
    the wall time), how often it changes rank, and the compute seconds it spends on each rank."""

    compute_s: float
    comm_s: float
    hops: int
    compute_by_rank: dict = field(default_factory=dict)


@dataclass
class Result:
    """A replay: the predicted wall time, each rank's breakdown, the critical path, and for
    reference the traced run's own wall time (``traced_wall_s``, the tracer's clocks)."""

    wall_s: float
    ranks: list
    critical: CriticalPath
    network: NetworkModel
    clock: str
    traced_wall_s: float
    meta: dict
    marks: dict = field(default_factory=dict)  #: label -> replayed time (s) of its 1st, 2nd, ... mark

    def after_first(self, label: str = "iteration") -> tuple[float, float, int] | None:
        """(time of the first ``label`` mark, mean time from one mark to the next after it, marks)
        — for training iterations: the first iteration (start-up included) and the steady state —
        or None without two such marks."""
        t = self.marks.get(label, [])
        if len(t) < 2:
            return None
        return t[0], (t[-1] - t[0]) / (len(t) - 1), len(t)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["network"]["bandwidth_Bps"] = str(self.network.bandwidth_Bps) if math.isinf(self.network.bandwidth_Bps) \
            else self.network.bandwidth_Bps
        return out

    def summary(self) -> str:
        """A few readable lines."""
        c = self.critical
        lines = [f"replay of {len(self.ranks)} rank(s) on {self.network.name} ({self.clock} clock): "
                 f"predicted wall {self.wall_s:.4f} s (traced run: {self.traced_wall_s:.4f} s)",
                 f"  critical path: compute {c.compute_s:.4f} s, communication {c.comm_s:.4f} s, "
                 f"{c.hops} rank changes"]
        steady = self.after_first()
        if steady is not None:
            lines.append(f"  {steady[2]} iterations: the first ends at {steady[0]:.4f} s, then {steady[1]:.4f} s each")
        for r in self.ranks:
            lines.append(f"  rank {r.rank:3d}: compute {r.compute_s:.4f} s  comm {r.comm_s:.4f} s  "
                         f"wait {r.wait_s:.4f} s  end {r.end_s:.4f} s")
        return "\n".join(lines)


_WALL_FIELD = {"c": 2, "s": 7, "r": 6, "w": 2, "k": 5}


def _match(doc: dict):
    """Events per rank (indexed by world rank), and for every receive its send, for every send its
    receive, and for every collective its members' (rank, event index)."""
    ranks = sorted(doc["ranks"], key=lambda r: r["rank"])
    if [r["rank"] for r in ranks] != list(range(len(ranks))):
        raise ValueError("trace: ranks are not 0..P-1")
    events = [r["events"] for r in ranks]
    sends, recvs, colls = {}, {}, {}
    for r, rec in enumerate(ranks):
        groups = [tuple(g) for g in rec["groups"]]
        for i, ev in enumerate(rec["events"]):
            if ev[0] == "s":
                sends[(groups[ev[1]], r, ev[2], ev[3], ev[5])] = (r, i)
            elif ev[0] == "r":
                recvs[(groups[ev[1]], ev[2], r, ev[3], ev[5])] = (r, i)
            elif ev[0] == "k":
                colls.setdefault((groups[ev[2]], ev[4]), []).append((r, i))
    if sends.keys() != recvs.keys():
        key = next(iter(sends.keys() ^ recvs.keys()))
        raise ValueError(f"trace: unmatched message (communicator, source, dest, tag, seq) = {key}")
    partner = {}
    for key, s in sends.items():
        partner[s], partner[recvs[key]] = recvs[key], s
    for (group, seq), members in colls.items():
        if sorted(q for q, _ in members) != sorted(group):
            raise ValueError(f"trace: collective {seq} of ranks {group} not recorded on all of them")
        if len({events[q][i][1] for q, i in members}) > 1:
            raise ValueError(f"trace: collective {seq} of ranks {group} is of different kinds")
        for m in members:
            partner[m] = members
    return events, partner


class _Sim:
    """The event-by-event replay; :func:`replay` runs it."""

    def __init__(self, doc: dict, net: NetworkModel, clock: str):
        self.events, self.partner = _match(doc)
        self.net, self.wall = net, clock == "wall"
        P = len(self.events)
        self.pos = [0] * P
        self.blocked = [False] * P    # whether rank r's last step found its next event waiting
        self.t = [0.0] * P
        self.end = [[0.0] * len(e) for e in self.events]
        self.dep = [[None] * len(e) for e in self.events]   # (rank, index) the event's time hangs on
        self.times = [RankTime(r) for r in range(P)]

    def _end_of(self, r: int, i: int) -> float:
        return self.end[r][i] if i >= 0 else 0.0

    def _rendezvous(self, s: int, k: int, post: float):
        """(start, event) of the rendezvous message of send event k of rank s, its receive posted
        at ``post``: when it starts moving, and the sender's event whose end that is (None: the
        post); None while rank s has not got far enough to tell."""
        depart = self.end[s][k]
        if self.net.async_progress or depart >= post:
            return (depart, (s, k)) if depart >= post else (post, None)
        for j in range(k + 1, self.pos[s]):   # the sender's next MPI call around or after post
            if self.events[s][j][0] != "c" and self.end[s][j] >= post:
                start = self.end[s][j - 1]
                return (start, (s, j - 1)) if start > post else (post, None)
        if self.pos[s] < len(self.events[s]) and not self.blocked[s]:
            return None
        # finished, or blocked in a call since t[s]
        return (self.t[s], (s, self.pos[s] - 1)) if self.t[s] > post else (post, None)

    def step(self, r: int) -> bool:
        """Replay rank r's next event; False while it waits for an event of another rank."""
        i, t, net = self.pos[r], self.t[r], self.net
        ev, acc = self.events[r][i], self.times[r]
        ready, dep = t, (r, i - 1)
        if ev[0] == "m":
            busy = 0.0
        elif ev[0] == "c":
            busy = ev[2 if self.wall else 1] * 1e-9
        elif ev[0] == "s":
            busy = ev[7 if self.wall else 6] * 1e-9
        else:
            busy = net.overhead_s
            if ev[0] == "r":
                s, k = self.partner[(r, i)]
                if self.pos[s] <= k:
                    return False
                depart = self.end[s][k]
                nbytes = self.events[s][k][4]
                start, by = (depart, (s, k)) if nbytes <= net.eager_limit else self._rendezvous(s, k, t) or (None, None)
                if start is None:
                    return False
                ready = max(t, start + net.transfer(nbytes))
                dep = by if by is not None and start > t else dep
            elif ev[0] == "w":
                for k in ev[1]:
                    q, j = self.partner[(r, k)]
                    nbytes = self.events[r][k][4]
                    if nbytes <= net.eager_limit:
                        continue
                    if self.pos[q] < j:
                        return False
                    start, by = self._rendezvous(r, k, self._end_of(q, j - 1))
                    if start + net.transfer(nbytes) > ready:
                        ready, dep = start + net.transfer(nbytes), by or (q, j - 1)
            else:
                members = self.partner[(r, i)]
                if any(self.pos[q] < j for q, j in members):
                    return False
                q, j = max(members, key=lambda m: self._end_of(m[0], m[1] - 1))
                last = self._end_of(q, j - 1)
                ready = last + net.collective(ev[1], max(self.events[q][j][3] for q, j in members), len(members))
                dep = (q, j - 1)
            acc.wait_s += ready - t
        if ev[0] == "c":
            acc.compute_s += busy
        else:
            acc.comm_s += busy
        self.end[r][i] = self.t[r] = ready + busy
        self.dep[r][i] = dep
        self.pos[r] += 1
        return True

    def run(self) -> None:
        moved = True
        while moved:
            moved = False
            for r, evs in enumerate(self.events):
                while self.pos[r] < len(evs):
                    self.blocked[r] = not self.step(r)
                    if self.blocked[r]:
                        break
                    moved = True
        stuck = [r for r, evs in enumerate(self.events) if self.pos[r] < len(evs)]
        if stuck:
            r = stuck[0]
            raise ValueError(f"trace: replay deadlocks; rank {r} waits at event {self.pos[r]} "
                             f"{self.events[r][self.pos[r]][:2]}")
        for r, acc in enumerate(self.times):
            acc.end_s = self.t[r]

    def marks(self) -> dict:
        """label -> the time each of its marks is passed: the k-th when the last of the ranks that
        make a k-th reaches it."""
        out = {}
        for r, evs in enumerate(self.events):
            seen = {}
            for i, ev in enumerate(evs):
                if ev[0] == "m":
                    k = seen[ev[1]] = seen.get(ev[1], -1) + 1
                    times = out.setdefault(ev[1], [])
                    if k == len(times):
                        times.append(0.0)
                    times[k] = max(times[k], self.end[r][i])
        return out

    def critical_path(self) -> CriticalPath:
        """Walk back from the last event of the rank that ends last along each event's dependency."""
        r = max(range(len(self.t)), key=lambda q: self.t[q])
        i = len(self.events[r]) - 1
        compute = comm = 0.0
        hops, by_rank = 0, {}
        while i >= 0:
            ev = self.events[r][i]
            q, j = self.dep[r][i]
            span = self.end[r][i] - self._end_of(q, j)
            if ev[0] == "c":
                compute += span
                by_rank[r] = by_rank.get(r, 0.0) + span
            else:
                comm += span
            hops += q != r
            r, i = q, j
        return CriticalPath(compute, comm, hops, dict(sorted(by_rank.items())))


def replay(trace: dict, network: NetworkModel = PRESETS["ib"], clock: str | None = None) -> Result:
    """Replay ``trace`` (as :func:`gpubraid.runtime.trace.load` returns it) on ``network``.

    ``clock``: "thread" (compute spans as thread CPU time) or "wall"; default: the trace's own
    (thread for CPU runs, wall for GPU runs).  ValueError for a trace whose events do not match.
    """
    clock = clock or trace.get("clock", "thread")
    if clock not in ("thread", "wall"):
        raise ValueError(f"clock must be 'thread' or 'wall'; got {clock!r}")
    sim = _Sim(trace, network, clock)
    sim.run()
    traced = max((sum(ev[_WALL_FIELD[ev[0]]] for ev in evs if ev[0] != "m") * 1e-9 for evs in sim.events),
                 default=0.0)
    return Result(max(sim.t, default=0.0), sim.times, sim.critical_path(), network, clock, traced,
                  trace.get("meta", {}), sim.marks())
