"""The CLI's client of a runbookd server: URL and token from RUNBOOKD_URL / RUNBOOKD_TOKEN or a config file.

~/.config/runbookd/config.toml (or $RUNBOOKD_CONFIG) may hold `url = "..."` and `token = "..."`;
environment variables win. Errors come back as ClientError with a message that says what to do.
"""

from __future__ import annotations

import functools
import os
import ssl
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message, self.status, self.details = message, status, details


@dataclass
class ClientConfig:
    url: str
    token: str | None


def config_path() -> Path:
    return Path(os.environ.get("RUNBOOKD_CONFIG") or Path.home() / ".config" / "runbookd" / "config.toml")


def load_config() -> ClientConfig:
    file: dict[str, Any] = {}
    path = config_path()
    if path.is_file():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from None
    port = os.environ.get("RUNBOOKD_PORT")  # the port `runbookd up` was told to use, when no URL says more
    url = (os.environ.get("RUNBOOKD_URL") or file.get("url")
           or (f"http://127.0.0.1:{port}" if port and port.isdigit() else DEFAULT_URL))
    token = os.environ.get("RUNBOOKD_TOKEN") or file.get("token")
    return ClientConfig(url=str(url).rstrip("/"), token=str(token) if token else None)


def _error(response: httpx.Response, config: ClientConfig) -> ClientError:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = error.get("message") or response.text[:300] or response.reason_phrase
    if response.status_code == 401:
        hint = "set RUNBOOKD_TOKEN" if not config.token else "check RUNBOOKD_TOKEN (revoked or expired?)"
        return ClientError(f"{config.url} refused the token: {message}; {hint}", 401)
    if response.status_code == 403:
        return ClientError(f"not allowed: {message}", 403)
    return ClientError(message, response.status_code, error.get("details"))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's verifying TLS context, made once per process: loading the CA bundle for every client cost more
    than the request of a quick command (tests and the console make many clients in one process)."""
    return httpx.create_ssl_context()


class Client:
    def __init__(self, config: ClientConfig | None = None, timeout: float = 30.0) -> None:
        self.config = config or load_config()
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self.http = httpx.Client(base_url=self.config.url, headers=headers, timeout=timeout, verify=tls_context())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def download(self, path: str, dest: Path) -> int:
        """Stream a file to dest (written whole or not at all); returns its size."""
        partial = dest.with_name(dest.name + ".part")
        try:
            with self.http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response, self.config)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.ConnectError:
            raise ClientError(f"cannot reach runbookd at {self.config.url} (connection refused)") from None
        partial.replace(dest)
        return dest.stat().st_size

    def get_text(self, path: str, **kwargs: Any) -> str:
        """GET a non-JSON resource (a Markdown report, say), with the same errors as request()."""
        return self._send("GET", path, **kwargs).text

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ClientError(f"cannot reach runbookd at {self.config.url} (connection refused): start it with "
                              "`runbookd up`, or set RUNBOOKD_URL") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"request to {self.config.url} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response, self.config)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def events(self, path: str) -> Iterator[tuple[str, str]]:
        """(event, data) pairs of a Server-Sent Events stream, until the server ends it."""
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response, self.config)
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, "\n".join(data)
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.ConnectError:
            raise ClientError(f"cannot reach runbookd at {self.config.url} (connection refused)") from None


@contextmanager
def cli_client() -> Iterator[Client]:
    """A Client for a CLI command: a ClientError prints its message and exits 1, without a traceback."""
    import typer

    from server.console import make_console, print_error

    try:
        with Client() as client:
            yield client
    except ClientError as exc:
        print_error(make_console(stderr=True), exc.message)
        raise typer.Exit(1) from None
