"""The one-machine Ray of the --local modes: token auth stays on unless asked, and the worker hook moves
wildcard gRPC ports to loopback (the whole effect, every socket on loopback, is checked by the tests
that start serve/curate --local and list their listening sockets)."""

from __future__ import annotations

import os

import pytest

from polyvivid.ray_local import AUTH_ENV, RayAuthOff, check_auth, loopback_grpc_ports

from .sockets import listening_sockets


def test_ray_token_auth_is_turned_off_only_when_asked(monkeypatch, capsys):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    check_auth(False)
    assert AUTH_ENV not in os.environ and capsys.readouterr().err == ""
    monkeypatch.setenv(AUTH_ENV, "disabled")
    with pytest.raises(RayAuthOff, match="--insecure-ray-no-auth"):
        check_auth(False)
    monkeypatch.delenv(AUTH_ENV)
    check_auth(True)
    check_auth(True)  # said once
    err = capsys.readouterr().err.strip().splitlines()
    assert os.environ[AUTH_ENV] == "disabled"
    assert len(err) == 1 and err[0].startswith("polyvivid: warning: Ray token authentication is OFF")


def test_the_worker_hook_binds_wildcard_grpc_ports_to_loopback(monkeypatch):
    from concurrent import futures

    import grpc
    from ray._common import tls_utils

    monkeypatch.setattr(tls_utils, "add_port_to_grpc_server", tls_utils.add_port_to_grpc_server)
    loopback_grpc_ports()
    loopback_grpc_ports()  # installed once, not wrapped twice
    assert tls_utils.add_port_to_grpc_server.loopback is True
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = tls_utils.add_port_to_grpc_server(server, "[::]:0")  # a real gRPC server, as a Serve replica's
    server.start()
    try:
        mine = [s for s in listening_sockets(os.getpid()) if s.port == port]
        assert mine and all(s.loopback for s in mine), mine
    finally:
        server.stop(None)
