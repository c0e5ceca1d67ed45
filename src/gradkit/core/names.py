"""Names that come from users or from a store, made safe to use as file names; paths made
safe to put in a URI."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from pathlib import Path


def file_name(name: str) -> str:
    """`name` as a safe file name: letters, digits and `._-`, never a path. A name that had to
    change gets a short hash of itself, so two names never map to one file."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def sqlite_uri(database: Path) -> str:
    """The SQLAlchemy URI of SQLite file `database`, quoted: `?`, `%` and `#` are valid in
    folder names and would otherwise end or garble the path."""
    return f"sqlite:///{urllib.parse.quote(str(database), safe='/')}"
