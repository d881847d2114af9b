"""The signature a private video's media must be fetched with (server/catalog/signing.py)."""

from __future__ import annotations

import time

from aiohttp import web

from server.catalog.handlers import SIGNER_KEY
from server.catalog.signing import Verdict
from server.core.errors import ApiError

# An answer about one URL's signature: no cache may keep it.
NO_STORE = {"Cache-Control": "no-store"}

REFUSALS = {
    Verdict.MISSING: ("signature_required",
                      "This video is private: its media needs the signed URL its author got"),
    Verdict.MALFORMED: ("invalid_signature", "The URL's signature is malformed"),
    Verdict.BAD_SIGNATURE: ("invalid_signature", "The URL's signature is not valid"),
    Verdict.EXPIRED: ("signature_expired",
                      "The signed URL has expired; fetch the video again for a new one"),
}


def require_signature(request: web.Request, video_id: int) -> None:
    """A 403 unless the request's `expires` and `sig` are valid for this video now."""
    query = request.query
    verdict = request.app[SIGNER_KEY].verify(video_id, query.get("expires"), query.get("sig"),
                                             time.time())
    if verdict is not Verdict.VALID:
        code, message = REFUSALS[verdict]
        raise ApiError(403, code, message, NO_STORE)
