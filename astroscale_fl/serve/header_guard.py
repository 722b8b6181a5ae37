"""Guards on request headers, which uvicorn does not have: a deadline, a size limit and a count limit.

uvicorn closes idle keep-alive connections but waits forever for a request whose headers never
finish, so a few hundred such connections (slowloris) hold the server's connection slots; and it
takes request lines and headers of any size and number (a 16 MB header, 100,000 headers).
:func:`header_guard_protocol` returns uvicorn's httptools protocol with

- a timer per request, armed when a connection opens or a request begins and disarmed when its
  headers are complete; when it fires, the connection is closed and one line is logged;
- a limit on the bytes of the request line and headers (:data:`MAX_HEADER_BYTES`) and on the
  number of headers (:data:`MAX_HEADERS`): a request over either gets ``431 Request Header Fields
  Too Large``, one line is logged, the rest of what the client sends is read and dropped for
  :data:`LINGER_S` (so that it can read the answer) and the connection is closed.

Bodies have their own limits (:class:`~astroscale_fl.serve.middleware.BodyLimitMiddleware`).
"""

from __future__ import annotations

import logging

log = logging.getLogger("astroscale_fl.serve")

#: Most bytes of request line plus headers (names and values) in one request.
MAX_HEADER_BYTES = 64 * 1024
#: Most header fields in one request.
MAX_HEADERS = 100
#: Seconds a refused connection's further bytes are read and dropped before it is closed.
LINGER_S = 2.0

_REFUSAL = b"request header fields too large"


def header_guard_protocol(timeout_s: float, max_header_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS):
    """uvicorn's ``http`` protocol class with a ``timeout_s`` header deadline and header limits, or
    ``"auto"`` (no guards) when uvicorn's httptools protocol is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class HeaderGuardProtocol(HttpToolsProtocol):
        _header_timer = None
        _refused = False
        _in_headers = True
        _unparsed = 0  # bytes fed while the current request's headers were incomplete
        _header_bytes = 0
        _header_count = 0
        _boundaries = 0  # requests whose headers, or whole message, the parser has finished

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # drained until the linger timer closes the connection
            in_headers, boundaries = self._in_headers, self._boundaries
            super().data_received(data)
            # all of this chunk was header bytes only if no request's headers or body ended in it
            if in_headers and self._in_headers and not self._refused and boundaries == self._boundaries:
                self._unparsed += len(data)
                if self._unparsed > max_header_bytes:  # before the parser holds more of an endless header
                    self._refuse(f"more than {max_header_bytes} bytes of request headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = self._header_count = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4
            self._header_count += 1
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_headers = False
            self._unparsed = 0
            self._boundaries += 1
            if self._refused:
                return
            if self._header_count > max_headers:
                self._refuse(f"{self._header_count} request headers (at most {max_headers})")
            elif self._header_bytes > max_header_bytes:
                self._refuse(f"{self._header_bytes} bytes of request headers (at most {max_header_bytes})")
            else:
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_headers = True
            self._boundaries += 1
            if not self._refused:
                super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _refuse(self, why: str) -> None:
            self._refused = True
            self._disarm()
            client = self.client or ("?", 0)
            log.warning("%s:%s: %s; answered 431 and closing the connection", client[0], client[1], why)
            if not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL))
                self.loop.call_later(LINGER_S, self.transport.close)

        def _arm(self) -> None:
            if self._header_timer is None and not self._refused:
                self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                client = self.client or ("?", 0)
                log.warning("%s:%s: request headers not complete within %g s; connection closed", client[0], client[1], timeout_s)
                self.transport.close()

    return HeaderGuardProtocol
