"""What a planned answer sends, whichever path sends it (a local file by sendfile, or
ranges forwarded from the bucket): its status, its headers and its body's pieces."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .files import VideoFile
from .ranges import ByteRange, RangeOutcome, RangePlan, multipart_layout


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    # Literal bytes (multipart part headers) and file ranges, in the order sent.
    body: list[bytes | ByteRange]
    # What StreamCounts counts it as: "full", "single" or "multi".
    kind: str


def answer(plan: RangePlan, video: VideoFile) -> Answer:
    """The answer to a satisfiable plan: the whole file, one range, or several."""
    headers = video.headers
    if plan.outcome is RangeOutcome.FULL:
        return Answer(200, {**headers, "Content-Type": video.content_type,
                            "Content-Length": str(video.size)},
                      [ByteRange(0, video.size - 1)] if video.size else [], "full")
    if len(plan.ranges) == 1:
        only = plan.ranges[0]
        return Answer(206, {**headers, "Content-Range": only.content_range(video.size),
                            "Content-Type": video.content_type,
                            "Content-Length": str(only.length)}, [only], "single")
    layout = multipart_layout(plan.ranges, video.size, video.content_type,
                              secrets.token_hex(12))
    body: list[bytes | ByteRange] = []
    for part_header, part in layout.parts:
        body += [part_header, part]
    body.append(layout.closing)
    return Answer(206, {**headers, "Content-Type": layout.content_type,
                        "Content-Length": str(layout.content_length)}, body, "multi")
