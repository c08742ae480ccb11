#!/usr/bin/env python3
"""An example web application that signs users in with a code sent out of band (mail, SMS).

Standard library only, plus otp_agent.client.  Run it as its own system account (say ``webapp``),
never as root, and make that account a member of the agent's ``[agent] validator_group``: only
then may it send and validate codes for every user (docs/applications.md, section 2).

    OTP_AGENT_SOCKET=/run/otp-agent/agent.sock python3 contrib/examples/oob-webapp.py [PORT]

It listens on 127.0.0.1 (put a TLS reverse proxy in front of it).  A real application asks for
the password first and keeps the user name in its session instead of a hidden field.
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from otp_agent.client import AgentClient
from otp_agent.errors import NotFound, OtpAgentError, SendRefused, UsageError

MAX_BODY = 2048  # bytes of form data; a longer request is refused unread
USER_FORM = (
    '<form method="post" action="/send"><label>User name <input name="user" autocomplete="username"'
    ' required maxlength="64"></label> <button>Send me a code</button></form>'
)
CODE_FORM = (
    '<form method="post" action="/verify"><input type="hidden" name="user" value="{user}">'
    '<label>Code <input name="code" inputmode="numeric" autocomplete="one-time-code" required'
    ' maxlength="10"></label> <button>Sign in</button></form>'
)
App = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]


def make_app(agent: AgentClient) -> App:
    def page(start: StartResponse, status: str, text: str, form: str = "") -> list[bytes]:
        data = f"<!doctype html><title>Sign in</title><p>{text}</p>{form}".encode()
        start(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", "default-src 'none'; form-action 'self'"),
            ],
        )
        return [data]

    def app(environ: WSGIEnvironment, start: StartResponse) -> list[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
        if path == "/" and method == "GET":
            return page(start, "200 OK", "who are you?", USER_FORM)
        if path not in ("/send", "/verify"):
            return page(start, "404 Not Found", "no such page")
        if method != "POST":
            return page(start, "405 Method Not Allowed", "use the form")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return page(start, "411 Length Required", "no form data")
        if not 0 <= length <= MAX_BODY:
            return page(start, "413 Content Too Large", "too much form data")
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        user = form.get("user", [""])[0].strip()
        code = form.get("code", [""])[0].strip()
        if not user or (path == "/verify" and not code):
            return page(start, "400 Bad Request", "fill in the form")
        rhost = environ.get("REMOTE_ADDR")
        try:
            if path == "/send":
                sent = agent.send_code(user)
                text = f"a code was sent to {html.escape(sent.address)}"
                return page(start, "200 OK", text, CODE_FORM.format(user=html.escape(user)))
            result = agent.validate(user, code, service="oob-webapp", rhost=rhost)
        except NotFound:
            return page(start, "404 Not Found", "no code can be sent to this user")
        except SendRefused as exc:
            return page(start, "429 Too Many Requests", html.escape(str(exc)))
        except UsageError:
            return page(start, "400 Bad Request", "not a valid user name or code")
        except OtpAgentError as exc:  # agent down or busy, mail relay down...: fail closed
            print(f"oob-webapp: {type(exc).__name__}: {exc}", file=environ["wsgi.errors"])
            return page(start, "503 Service Unavailable", "try again later")
        # Only accepted lets in (with [policy] unenrolled = "allow", users without a token too).
        if result.accepted:
            return page(start, "200 OK", f"welcome, {html.escape(user)}")
        return page(start, "403 Forbidden", f"code refused ({html.escape(result.reason)})")

    return app


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    with AgentClient(os.environ.get("OTP_AGENT_SOCKET", "/run/otp-agent/agent.sock")) as agent:
        with make_server("127.0.0.1", port, make_app(agent)) as server:
            print(f"oob-webapp on http://127.0.0.1:{port}/", file=sys.stderr)
            server.serve_forever()


if __name__ == "__main__":
    main()
