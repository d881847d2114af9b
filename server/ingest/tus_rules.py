"""The tus 1.0 protocol's headers: parsing, checking and formatting. Pure functions.

Every malformed header is a 400 (or the status tus names), never a 500: values
are matched against ASCII patterns before anything converts them, so Unicode
digits, signs, spaces, huge numbers and bad base64 are all refused here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from server.core.errors import ApiError
from server.core.origins import normalise_origin

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "termination", "expiration", "checksum")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# The header a finished upload's responses name its video in; tus clients ignore
# headers they do not know.
VIDEO_ID_HEADER = "Tubelet-Video-Id"
# tusd's status for a chunk whose checksum does not match (not an IANA code).
CHECKSUM_MISMATCH = 460

Hasher = Callable[[], "hashlib._Hash"]
CHECKSUM_ALGORITHMS: dict[str, Hasher] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}

# A signed 64-bit integer has at most 19 digits; PostgreSQL's bigint holds no more.
MAX_INTEGER = 2**63 - 1
DIGITS_RE = re.compile(r"[0-9]{1,19}")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
# A key: visible ASCII without commas (the pair separator).
METADATA_KEY_RE = re.compile(r"[!-+\--~]{1,128}")
BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
MAX_METADATA_PAIRS = 32

CORS_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, "
    "Upload-Offset, Upload-Checksum, Upload-Defer-Length, Upload-Concat, "
    "X-HTTP-Method-Override, X-Requested-With"
)
CORS_EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, "
    f"Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, {VIDEO_ID_HEADER}"
)
CORS_MAX_AGE = "86400"


def bad_header(message: str) -> ApiError:
    return ApiError(400, "invalid_header", message)


def check_tus_resumable(value: str | None) -> None:
    """412 unless the request speaks tus 1.0.0 (every request but OPTIONS must say so)."""
    if value != TUS_VERSION:
        raise ApiError(412, "unsupported_tus_version",
                       f"Send Tus-Resumable: {TUS_VERSION}; it is the only version served",
                       {"Tus-Version": TUS_VERSION})


def parse_integer(value: str | None, name: str) -> int:
    """A non-negative decimal header value; 400 for anything else, missing included."""
    if value is None:
        raise bad_header(f"{name} is required")
    if not DIGITS_RE.fullmatch(value):
        raise bad_header(f"{name} must be a non-negative integer")
    number = int(value)
    if number > MAX_INTEGER:
        raise bad_header(f"{name} is too large")
    return number


def parse_upload_id(raw: str) -> str | None:
    """The id in an upload URL, or None when it cannot name an upload."""
    return raw if UPLOAD_ID_RE.fullmatch(raw) else None


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """Upload-Metadata: comma-separated `key base64value` pairs (the value may be absent)."""
    if value is None or value.strip() == "":
        return {}
    pairs = value.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise bad_header(f"Upload-Metadata has more than {MAX_METADATA_PAIRS} pairs")
    out: dict[str, bytes | None] = {}
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not METADATA_KEY_RE.fullmatch(parts[0]):
            raise bad_header("Upload-Metadata must be 'key base64' pairs separated by commas")
        key = parts[0]
        if key in out:
            raise bad_header(f"Upload-Metadata names {key!r} twice")
        out[key] = _decode_base64(parts[1], key) if len(parts) == 2 else None
    return out


def _decode_base64(text: str, key: str) -> bytes:
    if not BASE64_RE.fullmatch(text) or len(text) % 4:
        raise bad_header(f"Upload-Metadata value of {key!r} is not valid base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_header(f"Upload-Metadata value of {key!r} is not valid base64") from None


def metadata_text(metadata: Mapping[str, bytes | None], key: str) -> str | None:
    """A metadata value as text; 422 unless it is UTF-8."""
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "validation_error", f"Metadata {key!r} must be UTF-8 text") from None


def video_fields(metadata: Mapping[str, bytes | None]) -> tuple[dict[str, str], str | None]:
    """The video's text fields and the client's file name, from upload metadata.

    The title falls back to the file name without its extension (`filename`, or
    `name` as Uppy and many tus-js-client pages send it), so a client that only
    names the file still makes a video.
    """
    filename = metadata_text(metadata, "filename") or metadata_text(metadata, "name")
    title = metadata_text(metadata, "title")
    if (title is None or not title.strip()) and filename:
        stem = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        title = stem.rsplit(".", 1)[0] if "." in stem.strip(".") else stem
    fields = {"title": title or "", "description": metadata_text(metadata, "description") or ""}
    return fields, filename


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> hashlib._Hash:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_checksum(value: str | None) -> Checksum | None:
    """Upload-Checksum: `algorithm base64digest`, or None when absent."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise bad_header("Upload-Checksum must be 'algorithm base64digest'")
    algorithm, encoded = parts[0].lower(), parts[1]
    make = CHECKSUM_ALGORITHMS.get(algorithm)
    if make is None:
        raise bad_header(f"Unsupported checksum algorithm; use one of {checksum_algorithms()}")
    if not BASE64_RE.fullmatch(encoded) or len(encoded) % 4:
        raise bad_header("Upload-Checksum digest is not valid base64")
    digest = base64.b64decode(encoded)
    if len(digest) != make().digest_size:
        raise bad_header(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return Checksum(algorithm, digest)


def checksum_algorithms() -> str:
    return ",".join(CHECKSUM_ALGORITHMS)


def http_date(moment: datetime) -> str:
    """RFC 9110's IMF-fixdate, as Upload-Expires carries it."""
    return format_datetime(moment, usegmt=True)


def discovery_headers(max_size: int) -> dict[str, str]:
    """What OPTIONS tells a client about this server."""
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": checksum_algorithms(),
    }


def cors_headers(origin: str | None, allowed: Iterable[str], *,
                 preflight: bool) -> dict[str, str]:
    """CORS headers for a page of `origin`; none unless it is listed in ALLOWED_ORIGINS.

    Same-origin pages need none. Tokens travel in Authorization, never in cookies,
    so credentials are not allowed and "*" may reflect any origin.
    """
    if origin is None:
        return {}
    listed = tuple(allowed)
    candidate = normalise_origin(origin)
    if candidate is None:
        return {}
    if "*" not in listed and candidate not in {normalise_origin(item) for item in listed}:
        return {}
    headers = {"Access-Control-Allow-Origin": origin.strip(), "Vary": "Origin"}
    if preflight:
        headers.update({
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
            "Access-Control-Max-Age": CORS_MAX_AGE,
        })
    else:
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
    return headers
