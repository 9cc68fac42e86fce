"""File names of the drift reports the detect stage renders: safe whatever a segment's labels hold."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime


def report_file_name(segment: str, start: datetime) -> str:
    """A safe file name for a segment's report: no separators or dots, bounded, unique by a hash.

    >>> report_file_name("support|v2|shop|/chat/../admin|acme", datetime(2026, 3, 1, 12))
    'support_v2_shop_chat_admin_acme-9f454eb6093e-20260301T120000.html'
    """
    # Segment labels come from producers: a route like /chat must not become a folder.
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", segment).strip("_")[:80]
    digest = hashlib.sha256(segment.encode()).hexdigest()[:12]
    return f"{readable}-{digest}-{start:%Y%m%dT%H%M%S}.html"
