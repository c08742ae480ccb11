"""The PostgreSQL store's DSN: what to show of it (never the password), what to strip from messages.

Driver errors may quote the connection string or the password (plain or percent-encoded);
:meth:`Dsn.redact` replaces every one of them with ``***`` before a message leaves the store.
"""

from __future__ import annotations

from urllib.parse import quote

from otp_agent.errors import StoreUnavailable


class Dsn:
    """A parsed DSN: what to show (never the password) and what to strip from messages."""

    def __init__(self, dsn: str) -> None:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict

        try:
            self.params = {
                key: str(value) for key, value in conninfo_to_dict(dsn).items() if value is not None
            }
        except Error:
            # libpq quotes fragments of the string it cannot parse: they may hold the password.
            raise StoreUnavailable(
                "store.dsn is not a valid PostgreSQL connection string (expected "
                "postgresql://USER@HOST:PORT/DATABASE or key=value pairs)"
            ) from None
        password = self.params.get("password", "")
        self._hidden = [text for text in (dsn, password, quote(password, safe="")) if text]
        self.where = "postgresql://{}@{}:{}/{}".format(
            self.params.get("user", ""),
            self.params.get("host", ""),
            self.params.get("port", "5432"),
            self.params.get("dbname", ""),
        )

    def redact(self, error: BaseException | str) -> str:
        """The error text on one line, with the DSN and its password replaced by ``***``."""
        text = " ".join(str(error).split())
        for hidden in self._hidden:
            text = text.replace(hidden, "***")
        return text
