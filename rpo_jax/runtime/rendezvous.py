"""A handshake on the coordinator's port before `jax.distributed.initialize()`: every process shows up, with the
same process count and its own process id, within a timeout, or each one stops with a one-line error.

Why not leave this to JAX: its coordination client aborts the whole process (SIGABRT and a C++ stack trace) when
the coordinator never answers or when fewer processes than announced connect, and it gives no message naming the
setting that is wrong. The handshake is plain TCP (one JSON line each way) on the same host:port; process 0
closes its listener before JAX's own coordinator binds the port, and clients close first, so no socket of
the handshake lingers on process 0's side of that port.
"""

from __future__ import annotations

import json
import socket
import time

from data_pipeline.errors import UserError

_RETRY_S = 0.25


class DistributedSetupError(UserError):
    """The processes of a multi-process run do not agree (count, ids) or cannot reach the coordinator."""


def split_address(address: str, setting: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedSetupError(f"{setting}={address!r}: expected HOST:PORT (e.g. 10.0.0.2:8476)")
    return host.strip("[]"), int(port)


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _receive(sock: socket.socket, deadline: float) -> dict | None:
    data = b""
    while not data.endswith(b"\n"):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    try:
        return json.loads(data)
    except ValueError:
        return None


def serve(address: str, num_processes: int, timeout_s: float, setting: str) -> None:
    """Process 0: waits until processes 1..n-1 have each said hello with the same count, then lets them go."""
    _, port = split_address(address, setting)
    deadline = time.monotonic() + timeout_s
    try:
        dual = socket.has_dualstack_ipv6()
        listener = socket.create_server(
            ("", port), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual
        )
    except OSError as e:
        raise DistributedSetupError(
            f"process 0 cannot listen on port {port} of {setting}={address} ({e.strerror}): is another process 0 "
            "(or another run) using it?"
        ) from e
    clients: dict[int, socket.socket] = {}
    problem = ""
    try:
        while len(clients) < num_processes - 1 and not problem and time.monotonic() < deadline:
            listener.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                break
            hello = _receive(sock, deadline) or {}
            their_count, their_id = hello.get("num_processes"), hello.get("process_id")
            if their_count != num_processes:
                problem = f"process {their_id} says there are {their_count} processes, process 0 says {num_processes}"
            elif their_id in clients or not isinstance(their_id, int) or not 0 < their_id < num_processes:
                problem = f"two processes claim process id {their_id}" if their_id in clients else f"bad id {their_id}"
            if problem:
                _send(sock, {"error": problem})
                sock.close()
            else:
                clients[their_id] = sock
        if not problem and len(clients) < num_processes - 1:
            missing = sorted(set(range(1, num_processes)) - set(clients))
            problem = (
                f"only {len(clients) + 1} of {num_processes} processes reached the coordinator {address} within "
                f"{timeout_s:g} s (missing process ids {missing}): check the process count and that every process "
                "was started"
            )
        for sock in clients.values():
            _send(sock, {"error": problem} if problem else {"ok": True})
        for sock in clients.values():  # the client closes first (its side keeps the TIME_WAIT)
            _receive(sock, time.monotonic() + 5)
    finally:
        for sock in clients.values():
            sock.close()
        listener.close()
    if problem:
        raise DistributedSetupError(f"{setting}: {problem}")


def join(address: str, num_processes: int, process_id: int, timeout_s: float, setting: str) -> None:
    """Processes 1..n-1: says hello to process 0 (retrying until it listens) and waits for its verdict."""
    host, port = split_address(address, setting)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.01))
            break
        except OSError as e:
            if time.monotonic() + _RETRY_S >= deadline:
                raise DistributedSetupError(
                    f"{setting}={address}: the coordinator (process 0) did not answer within {timeout_s:g} s "
                    f"({e.strerror or type(e).__name__}); is process 0 running, and is the address reachable from "
                    "this host?"
                ) from e
            time.sleep(_RETRY_S)
    with sock:
        _send(sock, {"process_id": process_id, "num_processes": num_processes})
        # Process 0 listens, so it started before now and gives its verdict within `timeout_s` from now.
        reply = _receive(sock, time.monotonic() + timeout_s + 5)
    if reply is None:
        raise DistributedSetupError(
            f"{setting}={address}: process 0 did not confirm within {timeout_s:g} s that all {num_processes} "
            "processes are present; check the process count and that every process was started"
        )
    if "error" in reply:
        raise DistributedSetupError(f"{setting}: {reply['error']}")
