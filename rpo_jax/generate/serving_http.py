"""uvicorn's HTTP/1.1 protocol (h11) with the changes `rpo-jax serve` needs below the app: answers uvicorn gives
itself are JSON like every other, and a request's head must arrive in time.

- A request uvicorn cannot parse (a bad Content-Length, a malformed request line or header, headers too large)
  gets its 400 with an OpenAI-style JSON body instead of plain text, and the connection is closed.
- A connection that has sent part of a request head and then not the rest within `read_timeout_s` gets a JSON 408
  and is closed; one that sends nothing is closed after uvicorn's keep-alive timeout, as an idle keep-alive
  connection is (uvicorn arms that timer only after a first answer). The body's own deadline is the app's.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rpo_jax.generate.serving_protocol import error_body

log = logging.getLogger("rpo_jax.serve")


def json_h11_protocol(read_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with the changes of the module doc (uvicorn.Config(http=...) takes it)."""

    class JsonH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.head_deadline = None
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting_for_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting_for_head and self.head_deadline is None:
                self.head_deadline = self.loop.call_later(read_timeout_s, self.head_timed_out)
            elif not waiting_for_head and self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def connection_lost(self, exc) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
            super().connection_lost(exc)

        def head_timed_out(self) -> None:
            self.head_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.reply_and_close(408, f"the request's head did not arrive within {read_timeout_s:g} s")

        def send_400_response(self, msg: str) -> None:
            self.reply_and_close(400, "malformed HTTP request (request line, a header such as Content-Length, framing)")

        def reply_and_close(self, status: int, message: str) -> None:
            body = json.dumps(error_body(status, message)).encode()
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode("ascii") + body)
            self.transport.close()
            client = ":".join(map(str, self.client)) if self.client else "-"
            log.info('%s "-" %d (%s)', client, status, message)  # the access log line of a request the app never saw

    return JsonH11Protocol
