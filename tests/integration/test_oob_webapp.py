"""contrib/examples/oob-webapp.py end to end: the example WSGI application served by
wsgiref.simple_server on 127.0.0.1, driven by a real HTTP client (http.client), talking to a
real agent whose SMTP channel delivers to a real aiosmtpd server on loopback.  The code is read
from the mail, accepted once ("welcome"), then refused as a replay; wrong codes, unknown users
and oversized forms get a 4xx page without a traceback, and no page ever shows the code.

The application runs in the test's process (root, so an administrator of the agent); what a
member of ``validator_group`` may do is tested in tests/integration/test_validator_group.py.
"""

from __future__ import annotations

import http.client
import importlib.util
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from otp_agent.client import AgentClient, SentCode, ValidationResult
from otp_agent.testing import RunningAgent, running_agent
from tests.unit.test_channels_smtp import Recorder, smtp_server

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "examples" / "oob-webapp.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oob_webapp_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without the access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(app: Any) -> Iterator[WSGIServer]:
    """The application on 127.0.0.1 and a random port, in a thread; shut down and closed after."""
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        assert not thread.is_alive()


def request(server: WSGIServer, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    """One request on a connection of its own; the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8")
        assert response.getheader("Content-Type") == "text/html; charset=utf-8"
        return response.status, text
    finally:
        connection.close()


def too_large(server: WSGIServer) -> int:
    """POST /send announcing a 1 MB form: refused from its Content-Length, before any of it is read
    (no body is sent, so that the server's close does not reset the connection)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.putrequest("POST", "/send")
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(1 << 20))
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def post(server: WSGIServer, path: str, **fields: str) -> tuple[int, str]:
    return request(server, "POST", path, urlencode(fields).encode())


def code_from(envelope: Any) -> str:
    body = envelope.content.decode("utf-8", "replace")
    found = re.search(r"code is (\d{6})", body)
    assert found, body
    return found.group(1)


@pytest.fixture
def mail() -> Iterator[tuple[Recorder, int]]:
    handler = Recorder()
    with smtp_server(handler) as server:
        yield handler, server.port


@pytest.fixture
def oob_agent(agent_directory: Path, mail: tuple[Recorder, int]) -> Iterator[RunningAgent]:
    channel = {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": mail[1],
        "security": "none",
        "from": "otp@example.com",
        "subject": "Your code",
    }
    with running_agent(agent_directory, sections={"channel": {"mail": channel}}) as agent:
        agent.otpctl(
            "enroll",
            "alice",
            "--type",
            "oob",
            "--channel",
            "mail",
            "--address",
            "alice@example.com",
            check=True,
        )
        yield agent


@pytest.fixture
def webapp(oob_agent: RunningAgent) -> Iterator[WSGIServer]:
    example = load_example()
    with AgentClient(oob_agent.socket_path) as client, serving(example.make_app(client)) as server:
        yield server


def test_a_mailed_code_signs_in_once(webapp: WSGIServer, mail: tuple[Recorder, int]) -> None:
    handler = mail[0]
    status, page = request(webapp, "GET", "/")
    assert status == 200 and 'action="/send"' in page

    status, page = post(webapp, "/send", user="alice")
    assert status == 200, page
    assert "a code was sent to a***@example.com" in page and 'action="/verify"' in page
    assert "alice@example.com" not in page
    (envelope,) = handler.envelopes
    assert envelope.rcpt_tos == ["alice@example.com"]
    code = code_from(envelope)
    assert code not in page

    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    status, page = post(webapp, "/verify", user="alice", code=wrong)
    assert status == 403 and "welcome" not in page and wrong not in page

    status, page = post(webapp, "/verify", user="alice", code=code)
    assert (status, page.count("welcome")) == (200, 1), page
    assert code not in page

    status, page = post(webapp, "/verify", user="alice", code=code)
    assert status == 403 and "replay" in page and "welcome" not in page
    assert code not in page


def test_unknown_users_and_bad_requests_get_4xx_pages(webapp: WSGIServer, mail: tuple[Recorder, int]) -> None:
    status, page = post(webapp, "/send", user="mallory")
    assert 400 <= status < 500, page
    assert "Traceback" not in page and "mallory" not in page
    assert mail[0].envelopes == []

    status, page = post(webapp, "/verify", user="mallory", code="123456")
    assert status == 403 and "Traceback" not in page and "123456" not in page

    status, page = post(webapp, "/send", user="<script>alert(1)</script>")
    assert 400 <= status < 500 and "<script>" not in page

    status, page = post(webapp, "/verify", user="<b>alice</b>", code="<i>1</i>")
    assert 400 <= status < 500 and "<b>" not in page and "<i>" not in page

    assert too_large(webapp) == 413 and mail[0].envelopes == []

    assert post(webapp, "/verify", user="alice")[0] == 400
    assert request(webapp, "GET", "/verify")[0] == 405
    assert request(webapp, "GET", "/admin")[0] == 404


class MarkupAgent:
    """Stands in for AgentClient to put markup into every value the application shows."""

    def send_code(self, user: str) -> SentCode:
        return SentCode("OOB1", "mail", "<i>a***</i>@example.com", 0.0)

    def validate(self, user: str, code: str, *, service: str, rhost: str | None = None) -> ValidationResult:
        assert service == "oob-webapp" and rhost == "127.0.0.1"
        return ValidationResult(code == "111111", "<u>bad_code</u>", None)


def test_every_value_on_a_page_is_escaped() -> None:
    user = '"><script>x</script>'
    with serving(load_example().make_app(MarkupAgent())) as server:
        status, page = post(server, "/send", user=user)
        assert status == 200 and "<i>" not in page and "&lt;i&gt;a***&lt;/i&gt;@example.com" in page
        assert 'value="&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in page and "<script>" not in page
        status, page = post(server, "/verify", user=user, code="222222")
        assert status == 403 and "&lt;u&gt;bad_code&lt;/u&gt;" in page and "222222" not in page
        status, page = post(server, "/verify", user=user, code="111111")
        assert status == 200 and "welcome, &quot;&gt;&lt;script&gt;" in page and "111111" not in page
