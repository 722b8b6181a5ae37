"""A deadline for request headers, which uvicorn does not have.

uvicorn closes idle keep-alive connections but waits forever for a request whose headers never
finish, so a few hundred such connections (slowloris) hold the server's connection slots.
:func:`header_deadline_protocol` returns uvicorn's httptools protocol with a timer per request,
armed when a connection opens or a request begins and disarmed when its headers are complete;
when it fires, the connection is closed and one line is logged. Bodies have their own deadline
(:class:`~astroscale_fl.serve.middleware.BodyLimitMiddleware`).
"""

from __future__ import annotations

import logging

log = logging.getLogger("astroscale_fl.serve")


def header_deadline_protocol(timeout_s: float):
    """uvicorn's ``http`` protocol class with a ``timeout_s`` header deadline, or ``"auto"``
    (no deadline) when uvicorn's httptools protocol is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
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

    return HeaderDeadlineProtocol
