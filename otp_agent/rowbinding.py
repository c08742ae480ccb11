"""The store-wide marker that says every token row carries a binding tag.

Rows written before row binding existed (schema 1) have no tag, and a row without a valid tag is
refused at validation.  ``otp-agent init`` (run by the packages on every upgrade) tags such rows
once, trusting them as they are at that moment, and then writes this marker, a tag of its own;
the daemon refuses to start on a store without a valid marker, so a store writer who deletes the
marker to have rows re-tagged stops the service instead (docs/security.md, residual risks).
"""

from __future__ import annotations

import hmac

from otp_agent.errors import StoreUnavailable
from otp_agent.keystore import KeyBackend
from otp_agent.store import TokenStore

MARKER_KEY = "row_binding"
_MARKER_MESSAGE = b"otp-agent/row-binding-marker/v1"


def _marker(keys: KeyBackend) -> str:
    return keys.binding_tag(_MARKER_MESSAGE).hex()


def bind_existing_rows(store: TokenStore, keys: KeyBackend) -> list[str]:
    """Tag the rows that predate row binding (only while the marker is absent); report it."""
    if store.get_meta(MARKER_KEY) is not None:
        require_row_binding(store, keys)
        return []
    count = 0
    for token in store.all_tokens():
        if token.binding is None:
            tag = keys.binding_tag(token.binding_message())
            store.set_binding(token.serial, tag)
            count += 1
    store.set_meta(MARKER_KEY, _marker(keys))
    return [f"bound {count} existing token(s) to their owner and parameters"] if count else []


def require_row_binding(store: TokenStore, keys: KeyBackend) -> None:
    """Refuse a store whose rows were never bound, or whose marker is not this backend's.

    :raises StoreUnavailable: run ``otp-agent init`` (after checking the store).
    """
    found = store.get_meta(MARKER_KEY)
    if found is None or not hmac.compare_digest(found, _marker(keys)):
        raise StoreUnavailable(
            "the token store has no valid row-binding marker: it was created by an older "
            "otp-agent or changed outside otp-agent; check it, then run: otp-agent init"
        )
