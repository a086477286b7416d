"""An account's name, ``platform:account``: the connector's name, its lease's, and its hash
tag in Redis."""

from __future__ import annotations

from ._debounce import _escaped


def account_name(platform: str, account: str) -> str:
    """``platform:account``, with ``%`` and ``:`` in either part percent-encoded as
    :func:`~trio_chatbridge.session_key` does, so that two accounts never share a name
    (plainly joined, platform ``p:a`` with account ``b`` and platform ``p`` with account
    ``a:b`` would both be ``p:a:b``: one lease, one journal, one cursor). A name of parts
    without ``%`` or ``:`` (the usual case) stays as it is, and so do its keys in Redis."""
    if ":" in platform or ":" in account or "%" in platform or "%" in account:
        platform, account = _escaped(platform), _escaped(account)
    return f"{platform}:{account}"
