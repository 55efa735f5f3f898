"""Store URLs as they may be shown: the password, wherever it is, replaced by ``***``.

No driver import: every command masks the URL it names, PostgreSQL or not.
"""

from __future__ import annotations

from urllib.parse import unquote


def mask_secrets(url: str) -> tuple[str, tuple[str, ...]]:
    """The URL with its password replaced by ``***`` (in the authority and in a
    ``password=`` parameter), and the password's raw forms."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, ()
    authority, slash, tail = rest.partition("/")
    secrets: list[str] = []
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        user, _, password = userinfo.partition(":")
        secrets += [password, unquote(password)]
        authority = f"{user}:***@{hosts}"
    path, question, query = tail.partition("?")
    items = []
    for item in query.split("&") if question else []:
        key, eq, value = item.partition("=")
        if key == "password" and eq:
            secrets += [value, unquote(value)]
            item = "password=***"
        items.append(item)
    masked = f"{scheme}://{authority}{slash}{path}{question}{'&'.join(items)}"
    return masked, tuple(s for s in secrets if s)


def mask_url(url: str) -> str:
    """``url`` with its password masked (``mask_secrets``)."""
    return mask_secrets(url)[0]
