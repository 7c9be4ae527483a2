"""Child processes that do not outlive their parent, and the loopback rendezvous of process groups on one
machine (local training ranks, a serving replica's sequence-parallel processes)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from datetime import timedelta

LOOPBACK = "127.0.0.1"


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux PR_SET_PDEATHSIG); if the
    parent (pid `parent`, else this process's parent now) is already gone, exit now. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = parent or os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the prctl took effect
        os._exit(1)


def loopback_interface() -> str:
    """The loopback interface's name (for GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n == "lo" or n.startswith("lo")), "lo")


def loopback_store(world_size: int, timeout: timedelta):
    """A torch.distributed TCPStore served on 127.0.0.1 only, and its port. A TCPStore server binds the
    wildcard address whatever host it is given, so the store gets a socket bound here instead
    (`master_listen_fd`); the ranks join it as clients."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(world_size * 4)
    port = listener.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, world_size=world_size, is_master=True, wait_for_workers=False,
                          master_listen_fd=listener.detach(), timeout=timeout)  # the store owns the socket now
    return store, port
