"""Receives into device arrays: with a CUDA-aware MPI the array itself, after the device's pending
work on it is finished; without one a host buffer, copied in afterwards.  Checked on stand-ins
for a device array, its backend and the MPI communicator, which log the calls in order."""
import numpy as np
import pytest

from gpubraid.runtime.comm import Comm


class Device:
    """A stand-in device array (not a NumPy array, so Comm treats it as one of the GPU's)."""

    def __init__(self, a):
        self.a = np.array(a)
        self.shape, self.dtype, self.nbytes = self.a.shape, self.a.dtype, self.a.nbytes


class Log:
    """The backend's and MPI's calls, in the order made; MPI writes 7 into what it receives."""

    def __init__(self):
        self.calls = []
        self.rank = 0

    def synchronize(self):
        self.calls.append("synchronize")

    def to_host(self, a):
        self.calls.append("to_host")
        return a.a.copy()

    def copy_from_host(self, dst, host):
        self.calls.append("copy_from_host")
        dst.a[...] = host

    def _write(self, name, buf):
        self.calls.append(f"{name} into {'device' if isinstance(buf, Device) else 'host'}")
        (buf.a if isinstance(buf, Device) else buf)[...] = 7

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 2

    def Recv(self, buf, source, tag):
        self._write("Recv", buf)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        self._write("Gatherv", recvbuf[0])

    def Scatterv(self, sendbuf, recvbuf, root=0):
        self._write("Scatterv", recvbuf)


@pytest.mark.parametrize("cuda_aware", [True, False])
def test_receives_into_device_arrays(cuda_aware):
    log = Log()
    comm = Comm(log, cuda_aware, log)
    rows = ([1, 1], [0, 1])
    ops = {  # (the rank that receives, the call)
        "Recv": (1, lambda a: comm.recv_into(a, 0, 5)),
        "Gatherv": (0, lambda a: comm.gather_rows(Device(np.zeros((1, 3))), a, rows, 0)),
        "Scatterv": (1, lambda a: comm.scatter_rows(None, a, rows, 0)),
    }
    for name, (rank, op) in ops.items():
        a = Device(np.zeros((2 if name == "Gatherv" else 1, 3)))
        log.rank = rank
        log.calls.clear()
        op(a)
        received = [c for c in log.calls if c != "to_host"]
        if cuda_aware:
            assert received[-2:] == ["synchronize", f"{name} into device"], (name, log.calls)
        else:
            assert received[-2:] == [f"{name} into host", "copy_from_host"], (name, log.calls)
        assert (a.a == 7).all()
