"""A small real FHIR endpoint for the gateway's tests: an HTTP server that takes conditional
updates (``PUT /Observation?identifier=system|value``), validates each body as a FHIR
Observation with fhir.resources (R4B), checks that its identifier is the one searched for,
and keeps one resource per identifier (201 when created, 200 when updated). It can be told
to answer a status instead, and stopped and started again on the same port."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError


class FhirServer:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.resources: dict[str, dict[str, Any]] = {}  # identifier -> the last body
        self.created = 0
        self.updated = 0
        self.requests = 0
        self.invalid: list[str] = []
        self.answer: Callable[[str], int | None] = lambda identifier: None  # a forced status
        self.tokens: list[str | None] = []
        self._server: ThreadingHTTPServer | None = None
        self.changed = threading.Condition()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> FhirServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout_s)

    def put(self, path: str, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(path)
        searched = urllib.parse.parse_qs(url.query).get("identifier", [""])[0]
        with self.changed:
            self.requests += 1
            self.tokens.append(token)
            forced = self.answer(searched)
            if forced is not None:
                return forced, _outcome("error", f"status {forced} by the test")
            try:
                if url.path != "/fhir/Observation":
                    raise ValueError(f"no such type: {url.path}")
                resource = json.loads(body)
                Observation.model_validate(resource)
                found = resource["identifier"][0]
                if f"{found['system']}|{found['value']}" != searched:
                    raise ValueError("the body's identifier is not the one searched for")
            except (ValueError, KeyError, ValidationError) as exc:
                self.invalid.append(str(exc)[:200])
                return 400, _outcome("error", str(exc)[:200])
            status = 200 if searched in self.resources else 201
            self.resources[searched] = resource
            if status == 201:
                self.created += 1
            else:
                self.updated += 1
            self.changed.notify_all()
            return status, resource


def _outcome(severity: str, text: str) -> dict[str, Any]:
    issue = {"severity": severity, "code": "processing", "diagnostics": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _handler(server: FhirServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            auth = self.headers.get("Authorization")
            status, reply = server.put(self.path, body, auth)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler
