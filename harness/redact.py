"""Passwords out of everything harness prints or records: a URI's password becomes ``***``.

``postgresql+psycopg://user:secret@host/db`` -> ``postgresql+psycopg://user:***@host/db``, and a
``password=`` query or connection-string parameter likewise. Applied to whole lines of text, not
only to known URIs, so an error message that quotes a URL (SQLAlchemy, Ray, MLflow) is safe too.
"""
from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ ; the password runs to the '@' (no '/', so a path is never taken for one)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@")
# ?password=secret, &password=secret, and libpq's "password=secret" keyword form
_PARAM = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^&\s'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URI password and ``password=`` value replaced by ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PARAM.sub(lambda m: f"{m['head']}{MASK}", text)
