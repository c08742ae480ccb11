"""The SMTP channel against a real aiosmtpd server on 127.0.0.1 (plain, STARTTLS, implicit TLS)."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from otp_agent.channels import Delivery, open_channel, parse_channels
from otp_agent.errors import ChannelError
from otp_agent.payshield_sim.tlscert import make_self_signed, server_context
from otp_agent.sensitive import Secret

CODE = "581204"
PASSWORD = "s3cret-Relay-pw"
ADDRESS = "alice@example.com"


class Recorder:
    """An aiosmtpd handler that keeps every message and can refuse at each step."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.mail_reply: str | None = None
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        return "250 Message accepted"


class BoundController(Controller):
    """A Controller listening on a socket bound by the test to 127.0.0.1 and a random port."""

    def __init__(self, handler: Any, host: str = "127.0.0.1", **kwargs: Any) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        super().__init__(handler, hostname=host, port=self.listener.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.listener, ssl=self.ssl_context)


@contextmanager
def smtp_server(handler: Recorder, host: str = "127.0.0.1", **kwargs: Any) -> Iterator[BoundController]:
    controller = BoundController(handler, host, **kwargs)
    try:
        controller.start()
        yield controller
    finally:
        if controller._thread is not None:
            controller.stop()
        controller.listener.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    cert, key = make_self_signed(tmp_path)
    return cert, server_context(cert, key)


def channel(port: int, host: str = "127.0.0.1", **table: Any) -> Any:
    config = {"kind": "smtp", "host": host, "port": port, "from": "otp@example.com", "security": "none"}
    return open_channel(parse_channels({"mail": config | table}, Path("/"))["mail"])


def delivery(address: str = ADDRESS) -> Delivery:
    return Delivery(
        user="alice",
        serial="OOB0001",
        address=address,
        code=Secret(CODE.encode()),
        issuer="Example",
        validity_seconds=300,
    )


def received(recorder: Recorder) -> email.message.EmailMessage:
    (envelope,) = recorder.envelopes
    assert envelope.mail_from == "otp@example.com" and envelope.rcpt_tos == [ADDRESS]
    message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def refusal(call: Any) -> str:
    with pytest.raises(ChannelError) as caught:
        call()
    text = str(caught.value)
    assert CODE not in text and PASSWORD not in text and "\n" not in text
    return text


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    ok = auth_data.login == b"otp-agent" and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def test_plain_delivery_headers_and_body() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        channel(server.port, subject="Ihr Einmalcode für Example").deliver(delivery())
    message = received(recorder)
    assert message["From"] == "otp@example.com" and message["To"] == ADDRESS
    assert message["Subject"] == "Ihr Einmalcode für Example"
    assert message["Auto-Submitted"] == "auto-generated" and message["Message-ID"].endswith("@example.com>")
    assert message["Date"] is not None
    body = message.get_content().replace("\r\n", "\n")
    assert body == f"Your Example code is {CODE}. It expires in 5 minutes.\n"
    raw = recorder.envelopes[0].original_content
    assert raw.isascii() and CODE.encode() not in raw.split(b"\r\n\r\n", 1)[0]  # the code is in the body only


def test_a_template_cannot_add_headers() -> None:
    """A header written into the template stays in the body (LF is allowed there, CR is not)."""
    recorder = Recorder()
    template = "Code: {code}\nBcc: eve@evil.example\n\nSubject: hijacked"
    with smtp_server(recorder) as server:
        channel(server.port, message=template).deliver(delivery())
    message = received(recorder)
    assert message["Bcc"] is None and message.get_all("Subject") == ["Your one-time code"]
    assert "\nBcc: eve@evil.example" in message.get_content()
    assert recorder.envelopes[0].rcpt_tos == [ADDRESS]


def test_header_injection_in_the_address_is_refused_before_connecting() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        for address in (
            f"{ADDRESS}\r\nBcc: eve@evil.example",
            f"{ADDRESS}>, <eve@evil.example",
            "+49151234589",
        ):
            assert "channel mail" in refusal(lambda: channel(server.port).deliver(delivery(address)))
    assert recorder.envelopes == []


def test_non_ascii_body_is_encoded() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        channel(server.port, message="Ihr Code für {issuer}: {code}").deliver(delivery())
    message = received(recorder)
    assert message.get_content().replace("\r\n", "\n") == f"Ihr Code für Example: {CODE}\n"
    assert message["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_starttls_verifies_the_certificate(certificate: tuple[Path, ssl.SSLContext]) -> None:
    cert, context = certificate
    recorder = Recorder()
    with smtp_server(recorder, tls_context=context, require_starttls=True) as server:
        text = refusal(lambda: channel(server.port, security="starttls").deliver(delivery()))
        assert "STARTTLS with 127.0.0.1" in text and "certificate verification failed" in text
        channel(server.port, security="starttls", ca_file=str(cert)).deliver(delivery())
    assert received(recorder).get_content().startswith(f"Your Example code is {CODE}")


def test_starttls_is_never_skipped() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:  # offers no STARTTLS
        assert "STARTTLS extension not supported" in refusal(
            lambda: channel(server.port, security="starttls").deliver(delivery())
        )
    assert recorder.envelopes == []


def test_implicit_tls_verifies_the_certificate(certificate: tuple[Path, ssl.SSLContext]) -> None:
    cert, context = certificate
    recorder = Recorder()
    with smtp_server(recorder, ssl_context=context) as server:
        text = refusal(lambda: channel(server.port, security="tls").deliver(delivery()))
        assert "connecting to 127.0.0.1" in text and "certificate verification failed" in text
        channel(server.port, security="tls", ca_file=str(cert)).deliver(delivery())
    assert received(recorder)["To"] == ADDRESS


def test_the_host_name_is_checked(certificate: tuple[Path, ssl.SSLContext]) -> None:
    """The certificate names localhost and 127.0.0.1: a server at 127.0.0.2 does not verify."""
    cert, context = certificate
    try:
        with socket.create_server(("127.0.0.2", 0)):
            pass
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    with smtp_server(Recorder(), "127.0.0.2", ssl_context=context) as server:
        text = refusal(
            lambda: channel(server.port, "127.0.0.2", security="tls", ca_file=str(cert)).deliver(delivery())
        )
    assert "certificate verification failed" in text and "IP address mismatch" in text


def test_login_with_a_password_file(tmp_path: Path, certificate: tuple[Path, ssl.SSLContext]) -> None:
    cert, context = certificate
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    recorder = Recorder()
    kwargs: dict[str, Any] = {
        "tls_context": context,
        "require_starttls": True,
        "authenticator": authenticator,
        "auth_required": True,
    }
    login = {
        "security": "starttls",
        "ca_file": str(cert),
        "username": "otp-agent",
        "password_file": str(password_file),
    }
    with smtp_server(recorder, **kwargs) as server:
        channel(server.port, **login).deliver(delivery())
        assert len(recorder.envelopes) == 1
        password_file.write_text("wrong-password\n")  # read at each delivery
        assert "login as otp-agent refused: 535" in refusal(
            lambda: channel(server.port, **login).deliver(delivery())
        )
        password_file.unlink()
        assert "cannot read password_file" in refusal(
            lambda: channel(server.port, **login).deliver(delivery())
        )
        assert "530" in refusal(
            lambda: channel(server.port, security="starttls", ca_file=str(cert)).deliver(delivery())
        )
    assert len(recorder.envelopes) == 1


def test_a_bad_ca_file_is_a_channel_error(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "empty.pem"):
        assert "cannot load ca_file" in refusal(
            lambda: channel(1, security="tls", ca_file=str(ca_file)).deliver(delivery())
        )


def test_server_down() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    text = refusal(lambda: channel(port).deliver(delivery()))
    assert f"connecting to 127.0.0.1:{port}: Connection refused" in text


def test_a_silent_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (in the backlog), never greets
        started = time.monotonic()
        text = refusal(lambda: channel(silent.getsockname()[1], timeout=0.3).deliver(delivery()))
    assert "timed out after 0.3 s" in text and time.monotonic() - started < 5


def test_refusals_at_each_step_are_explained_and_scrubbed() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        recorder.mail_reply = "550 5.7.1 sender not allowed"
        text = refusal(lambda: channel(server.port).deliver(delivery()))
        assert "sender otp@example.com refused: 550 5.7.1 sender not allowed" in text
        recorder.mail_reply, recorder.rcpt_reply = None, f"550 5.1.1 <{ADDRESS}>: no such user"
        text = refusal(lambda: channel(server.port).deliver(delivery()))
        assert "recipient a***@example.com refused: 550 5.1.1 <a***@example.com>: no such user" in text
        assert ADDRESS not in text
        recorder.rcpt_reply, recorder.data_reply = None, f"554 5.7.1 content rejected: {CODE}"
        text = refusal(lambda: channel(server.port).deliver(delivery()))
        assert "refused: 554 5.7.1 content rejected: ******" in text
    assert recorder.envelopes == []


def test_nothing_is_left_open_after_failures() -> None:
    """Every failing path closes its socket (pytest turns a ResourceWarning into an error)."""
    import gc

    with socket.create_server(("127.0.0.1", 0)) as silent:
        for _ in range(3):
            refusal(lambda: channel(silent.getsockname()[1], timeout=0.1).deliver(delivery()))
    gc.collect()
