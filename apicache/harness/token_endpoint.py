"""
A real OAuth 2 token endpoint on loopback, for the tests where a real
daemon (or a real agent) fetches its Kafka token over HTTP.

It uses the standard library's threading HTTP server so that tests driving
the daemon with blocking clients don't need a reactor of their own.  The
answers come from L{apicache.testing.TokenIssuer}, which in-memory tests
serve through L{apicache.testing.TokenResource} instead.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apicache.testing import TokenIssuer

__all__ = ["TokenEndpoint"]


class TokenEndpoint(TokenIssuer):
    """
    A L{TokenIssuer} served over HTTP on 127.0.0.1; POST to L{url}.
    """

    def __init__(self, expires_in: float = 3600.0) -> None:
        super().__init__(expires_in)
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n).decode("latin-1")
                status, out = issuer.issue(self.headers.get("authorization", ""), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    def start(self) -> TokenEndpoint:
        """
        Serve on a daemon thread; return this endpoint.
        """
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """
        Stop serving and close the listening socket.
        """
        self.server.shutdown()
        self.server.server_close()
