"""Search over listed videos: PostgreSQL full-text search on the generated `search`
column (GIN), or a tag's videos for `#tag`.

A text query is parsed websearch-style ("quoted phrases", -negation, or) twice:
stemmed with SEARCH_LANGUAGE and as exact words ('simple'), matching either way.
The last word, while it is being typed (no space after it yet), also matches as a
prefix (`word:*`) together with the rest of the query, so results appear as one
types. Results are ranked by ts_rank_cd, then newest first; tag results newest first.
The query text reaches PostgreSQL only as a parameter.
"""

from __future__ import annotations

from typing import Any

from server.catalog.records import video_json, with_current_views
from server.core.db import Database
from server.core.keys import ViewTotals

from .rules import TagSearch, TextSearch, encode_cursor

Page = tuple[list[dict[str, Any]], str | None]


class Search:
    def __init__(self, db: Database, totals: ViewTotals, language: str) -> None:
        self._db = db
        self._totals = totals
        self._language = language

    async def text(self, query: TextSearch, viewer: int | None,
                   position: tuple[Any, ...] | None, limit: int) -> Page:
        before_rank, before_id = position if position is not None else (None, None)
        rows = await self._db.all("social_search", {
            "lang": self._language, "text": query.text, "head": query.head,
            "prefix": query.prefix, "viewer": viewer, "before_rank": before_rank,
            "before_id": before_id, "limit": limit})
        next_cursor = None
        if len(rows) == limit:
            next_cursor = encode_cursor(rows[-1]["search_rank"], rows[-1]["id"])
        return await self._items(rows, viewer), next_cursor

    async def tag(self, query: TagSearch, viewer: int | None, before_id: int | None,
                  limit: int) -> Page:
        rows = await self._db.all("social_search_tag", {
            "tag": query.tag, "viewer": viewer, "before_id": before_id, "limit": limit})
        next_cursor = encode_cursor(rows[-1]["id"]) if len(rows) == limit else None
        return await self._items(rows, viewer), next_cursor

    async def _items(self, rows: list[dict[str, Any]],
                     viewer: int | None) -> list[dict[str, Any]]:
        return [video_json(row, viewer) for row in await with_current_views(self._totals, rows)]
