"""Run a benchmark with tracing on: a loopback OTLP/HTTP sink for its processes to export to (issue 18).

    .venv/bin/python bench/tracing/traced.py bench/run_dispatch.py [its arguments]

Sets OTEL_EXPORTER_OTLP_ENDPOINT (which turns tracing on in every runbookd process the benchmark starts: they
inherit the environment) to a sink in this process that reads each export and answers 200, then runs the
benchmark unchanged and prints what was exported. `make bench` runs flag_eval and run_dispatch through this
after their plain (tracing off) runs, so both figures sit side by side. The sink does not decode the
protobuf: a collector's work is not runbookd's cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

received = {"requests": 0, "bytes": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            received["requests"] += 1
            received["bytes"] += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"tracing ON: {sys.argv[1]} exporting OTLP/HTTP to {env['OTEL_EXPORTER_OTLP_ENDPOINT']}", flush=True)
    try:
        code = subprocess.run([sys.executable, *sys.argv[1:]], env=env, check=False).returncode
    finally:
        server.shutdown()
    print(f"tracing ON: {received['requests']} OTLP export requests, {received['bytes'] / 1e6:.1f} MB received")
    if received["requests"] == 0:
        print("tracing ON: nothing was exported (flag evaluations, OFREP, are not traced by default)")
    return code


if __name__ == "__main__":
    sys.exit(main())
