"""The ``kind = "smtp"`` channel: the code in a mail, through a relay, with the standard library.

The message is an :class:`email.message.EmailMessage` whose headers are set through the email
package (``From``/``To`` as :class:`email.headerregistry.Address`, never concatenated text) and
whose body is 7-bit clean (quoted-printable or base64 when it is not ASCII).  ``security`` is
``"tls"`` (TLS from the first byte, usually port 465), ``"starttls"`` (plain then STARTTLS,
refused if the server does not offer it: no silent downgrade) or ``"none"``.  TLS always
verifies the certificate and the host name (:func:`ssl.create_default_context`) against the
system CA store, or against ``ca_file`` alone when it is set.  The password is read from
``password_file`` at each delivery.  Every socket operation has the channel's ``timeout``.

Every failure is a :class:`ChannelError` saying at which step and why; server replies quoted in
it are scrubbed (code and password replaced by ``******``, the recipient masked, cut to 200
characters).
"""

from __future__ import annotations

import datetime
import email.policy
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from otp_agent.channels.addresses import mask, validate_address
from otp_agent.channels.config import SmtpChannelConfig
from otp_agent.channels.delivery import Delivery, render_message
from otp_agent.channels.template import scrub
from otp_agent.errors import ChannelError, UsageError

#: A password file larger than this is refused (it is not a password).
MAX_PASSWORD_FILE_SIZE = 4096
#: The mail is 7-bit clean and has CRLF line ends whatever the relay supports.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")


class SmtpChannel:
    """Delivers codes by mail according to one :class:`SmtpChannelConfig`."""

    def __init__(self, config: SmtpChannelConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        c = self.config
        return f"SmtpChannel({c.name!r}, {c.host}:{c.port}, security={c.security!r})"

    def deliver(self, delivery: Delivery) -> None:
        """Send the mail; return once the relay accepted it.

        :raises ChannelError: the address is not an e-mail address, the password file cannot be
            read, or the relay could not be reached, did not verify, or refused the mail.
        """
        try:
            address = validate_address(delivery.address, self.config.address_kinds)
        except UsageError as exc:
            raise ChannelError(f"channel {self.name}: {exc}") from None
        code = delivery.code_text()
        message = self.build_message(address, render_message(self.config.message, delivery, code))
        password = self._password()
        context = self._tls_context()
        secrets = [code] + ([password] if password else [])

        def clean(text: bytes | str) -> str:
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            return scrub(text.replace(address, mask(address)), secrets)

        self._send(message, address, password, context, clean)

    def build_message(self, address: str, body: str) -> EmailMessage:
        """The mail to ``address`` with ``body`` (headers through the email package only)."""
        config = self.config
        message = EmailMessage(policy=_POLICY)
        message["From"] = Address(addr_spec=config.sender)
        message["To"] = Address(addr_spec=address)
        message["Subject"] = config.subject
        message["Date"] = format_datetime(datetime.datetime.now(datetime.UTC).astimezone())
        message["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2])
        # An automatic message: vacation responders and the like must not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        return message

    def _where(self, stage: str) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"channel {self.name}: {stage} {shown}:{self.config.port}"

    def _password(self) -> str | None:
        path = self.config.password_file
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_PASSWORD_FILE_SIZE + 1)
        except OSError as exc:
            raise ChannelError(
                f"channel {self.name}: cannot read password_file {path}: {exc.strerror}"
            ) from None
        if len(data) > MAX_PASSWORD_FILE_SIZE:
            raise ChannelError(
                f"channel {self.name}: password_file {path} is larger than {MAX_PASSWORD_FILE_SIZE} bytes"
            )
        try:
            password = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise ChannelError(f"channel {self.name}: password_file {path} is not UTF-8") from None
        if not password:
            raise ChannelError(f"channel {self.name}: password_file {path} is empty")
        return password

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.security == "none":
            return None
        ca_file = self.config.ca_file
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except ssl.SSLError as exc:
            raise ChannelError(f"channel {self.name}: cannot load ca_file {ca_file}: {exc.reason}") from None
        except OSError as exc:
            raise ChannelError(
                f"channel {self.name}: cannot load ca_file {ca_file}: {exc.strerror}"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _send(
        self,
        message: EmailMessage,
        address: str,
        password: str | None,
        context: ssl.SSLContext | None,
        clean: Callable[[bytes | str], str],
    ) -> None:
        config = self.config
        client: smtplib.SMTP | None = None
        stage = "connecting to"
        try:
            if config.security == "tls":
                client = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            if config.security == "starttls":
                stage = "STARTTLS with"
                client.starttls(context=context)
            if config.username is not None and password is not None:
                stage = "logging in to"
                client.login(config.username, password)
            stage = "sending through"
            client.send_message(message, from_addr=config.sender, to_addrs=[address])
        except (OSError, ValueError) as exc:
            if client is not None:
                client.close()
            raise ChannelError(f"{self._where(stage)}: {self._explain(exc, clean)}") from None
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            pass  # the relay has accepted the mail; a lost QUIT changes nothing
        finally:
            client.close()

    def _explain(self, exc: BaseException, clean: Callable[[bytes | str], str]) -> str:
        """Why, in words fit for a log (no code, no password)."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc.reason or type(exc).__name__}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            replies = "; ".join(f"{code} {clean(text)}" for code, text in exc.recipients.values())
            return f"recipient {mask(address_of(exc))} refused: {replies}"
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return f"sender {self.config.sender} refused: {exc.smtp_code} {clean(exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return f"login as {self.config.username} refused: {exc.smtp_code} {clean(exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPResponseException):
            return f"refused: {exc.smtp_code} {clean(exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):  # smtplib turns a timeout into this
                return f"timed out after {self.config.timeout:g} s"
            return "the server closed the connection"
        if isinstance(exc, smtplib.SMTPException):
            return clean(str(exc))
        if isinstance(exc, TimeoutError):
            return f"timed out after {self.config.timeout:g} s"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve the host name: {exc.strerror}"
        if isinstance(exc, OSError):
            return exc.strerror or type(exc).__name__
        return type(exc).__name__


def address_of(exc: smtplib.SMTPRecipientsRefused) -> str:
    """The (first) refused recipient."""
    return next(iter(exc.recipients), "")
