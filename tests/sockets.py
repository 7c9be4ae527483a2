"""The listening sockets of a whole process tree, read from /proc (no psutil): what a local mode opens.

Used by the tests that start `serve --local`, `curate --local` and `train --local` to assert that
every socket they (and every process they start: Ray's GCS, raylets, agents, workers; the training
ranks) listen on is on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    protocol: str  # tcp, tcp6, udp, udp6
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def loopback(self) -> bool:
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] {self.protocol} {self.address}:{self.port}"


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _address(hex_address: str):
    raw = bytes.fromhex(hex_address)
    # /proc/net prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _bound_sockets() -> dict[int, tuple[str, object, int]]:
    """socket inode -> (protocol, address, port) of every listening TCP / unconnected UDP socket."""
    found = {}
    for protocol, state in (("tcp", TCP_LISTEN), ("tcp6", TCP_LISTEN), ("udp", UDP_UNCONNECTED),
                            ("udp6", UDP_UNCONNECTED)):
        try:
            lines = Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != state:
                continue
            address, port = fields[1].split(":")
            found[int(fields[9])] = (protocol, _address(address), int(port, 16))
    return found


def listening_sockets(root: int) -> set[Listener]:
    bound = _bound_sockets()
    found = set()
    for pid in process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in bound:
                found.add(Listener(pid, name, *bound[int(target[8:-1])]))
    return found


class ListenerWatch:
    """Samples the listening sockets of a process tree every `interval_s` while a command runs."""

    def __init__(self, root: int, interval_s: float = 0.5):
        self.root, self.interval_s = root, interval_s
        self.seen: set[Listener] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= listening_sockets(self.root)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ListenerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def processes(self) -> set[str]:
        return {listener.process for listener in self.seen}

    def not_loopback(self) -> list[str]:
        return sorted(str(listener) for listener in self.seen if not listener.loopback)
