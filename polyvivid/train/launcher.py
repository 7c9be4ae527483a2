"""`polyvivid train --local --nproc N`: N training processes on this machine, their rendezvous on loopback.

Not torchrun: torchrun's agent hosts its TCP stores on all interfaces (a TCPStore server binds the
wildcard address whatever host it is given), which would open the process group's store to the
network. Here the launcher binds the one store on 127.0.0.1 itself (a socket it bound, handed over as
`master_listen_fd`) and the workers join it as clients, as torchrun's workers join its agent's store
(TORCHELASTIC_USE_AGENT_STORE); gloo and NCCL are told to use the loopback interface. In a cluster,
torchrun stays the launcher (the PyTorchJob's command), where the nodes must reach each other.

What a user expects of one command:
- a worker's one-line error (`polyvivid: error: ...`, the same on every rank) is printed once and the
  launcher exits with the worker's code (2 for bad input); the other workers are stopped;
- SIGTERM or SIGINT to the launcher goes to the workers as SIGTERM: they checkpoint at the end of the
  step and exit 143 (polyvivid/train/trainer.py), and so does the launcher. The workers run in their own
  session (a terminal's Ctrl-C reaches only the launcher, which passes it on once) and get SIGTERM from
  the kernel if the launcher dies, so none is left training on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

from ..processes import LOOPBACK, die_with_parent, loopback_interface, loopback_store
ERROR_PREFIX = "polyvivid: error:"
STOP_GRACE_S = 120  # a stopped worker finishes its step and uploads a checkpoint first


def worker_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    iface = loopback_interface()
    env.setdefault("GLOO_SOCKET_IFNAME", iface)
    env.setdefault("NCCL_SOCKET_IFNAME", iface)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
               GROUP_RANK="0", MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    return env


def _die_with_parent() -> None:
    """In the child before exec: its own session, and SIGTERM when the launcher dies (Linux PR_SET_PDEATHSIG)."""
    os.setsid()
    die_with_parent(signal.SIGTERM)


class _ErrorsOnce:
    """Passes the workers' stderr through, printing each distinct one-line error only once."""

    def __init__(self):
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def pump(self, stream) -> None:
        for line in stream:
            with self.lock:
                if line.startswith(ERROR_PREFIX):
                    if line in self.seen:
                        continue
                    self.seen.add(line)
                sys.stderr.write(line)
                sys.stderr.flush()


def launch(worker_args: list[str], nproc: int, command: str = "train") -> int:
    """Run `python -m polyvivid.cli COMMAND WORKER_ARGS` (train or precompute) as N ranks; returns the exit code
    for the command."""
    store, port = loopback_store(nproc, timedelta(minutes=30))
    errors = _ErrorsOnce()
    workers, pumps = [], []
    for rank in range(nproc):
        proc = subprocess.Popen([sys.executable, "-m", "polyvivid.cli", command, *worker_args],
                                env=worker_env(rank, nproc, port), stderr=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent)
        pumps.append(threading.Thread(target=errors.pump, args=(proc.stderr,), daemon=True))
        pumps[-1].start()
        workers.append(proc)

    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _supervise(workers, stopping)
        for pump in pumps:  # the workers' last lines before the launcher's exit
            pump.join(timeout=5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        del store
    return code


def _shell_code(code: int | None) -> int | None:
    """Popen's -N for a worker killed by signal N, as a shell reports it (128 + N); sys.exit(-6) would be 250."""
    return 128 - code if code is not None and code < 0 else code


def _supervise(workers: list[subprocess.Popen], stopping: threading.Event) -> int:
    """Wait for the workers; stop them all on a signal or when one fails. Returns the command's exit code:
    the first failure's (the cause, not the stopped workers' 143), else 143 if stopped, else 0."""
    first_failure, signalled_at = None, None
    while True:
        codes = [_shell_code(w.poll()) for w in workers]
        if first_failure is None:
            first_failure = next((c for c in codes if c not in (None, 0)), None)
        if all(c is not None for c in codes):
            return first_failure or 0
        if (stopping.is_set() or first_failure is not None) and signalled_at is None:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
        if signalled_at is not None and time.monotonic() - signalled_at > STOP_GRACE_S:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        time.sleep(0.1)
