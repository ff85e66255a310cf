"""A static file server on 127.0.0.1 with HTTP Range support and injectable faults."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[dict] = []  # the headers of every GET
        self.truncate = 0  # this many next responses send half the body, then hang up
        self.ranges = True  # False: ignore Range and always send the whole file
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append(dict(self.headers))
            data = server.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404, "no such file")
                return
            start = 0
            wanted = self.headers.get("Range", "")
            if server.ranges and wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0])
                if start >= len(data):
                    self.send_error(416, "range not satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if server.truncate > 0:
                server.truncate -= 1
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler
