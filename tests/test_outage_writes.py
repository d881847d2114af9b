"""Uploads and deletes while Redis or PostgreSQL fail, and the sweep of orphaned files:
every write either happens fully (row, file, every process told) or not at all."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from server.catalog import records
from server.catalog.handlers import CATALOG_KEY
from server.core.keys import CONFIG_KEY
from server.core.storage import STORAGE_KEY_RE

from .conftest import fake_mp4, make_ready, new_user_token, query, until, upload
from .outages import own_redis, pg_proxy  # noqa: F401

DATA = fake_mp4(20_000, seed=5)


def storage_dir(client: TestClient) -> Path:
    return client.server.app[CONFIG_KEY].storage_dir


def stored_files(client: TestClient) -> list[str]:
    """Every file in the storage directory, temporary uploads included (not the
    directory holding the marker that names the storage's database)."""
    return sorted(p.name for p in storage_dir(client).iterdir() if p.name != ".tubelet")


async def status_of(client: TestClient, path: str, **headers: str) -> int:
    resp = await client.get(path, headers=headers)
    await resp.read()
    return resp.status


# --- Redis down ---------------------------------------------------------------

async def test_a_delete_while_redis_is_down_removes_the_video_everywhere(instance, own_redis):
    a = await instance(redis_url=own_redis.url)
    b = await instance(redis_url=own_redis.url)
    token = await new_user_token(a)
    resp = await upload(a, token, DATA)
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    await make_ready(a.server.app, video["id"])
    stream = video["stream_url"]
    await asyncio.sleep(0.5)  # the change reaches B before B caches the video
    resp = await b.get(stream)
    assert resp.status == 200 and await resp.read() == DATA
    etag = resp.headers["ETag"]
    [key] = stored_files(a)

    own_redis.stop()
    resp = await a.delete(f"/videos/{video['id']}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204, await resp.text()
    assert stored_files(a) == []
    assert not (storage_dir(a) / key).exists()

    async def gone_from_b() -> bool:
        return (await status_of(b, stream) == 404
                and await status_of(b, stream, **{"If-None-Match": etag}) == 404)

    assert await until(gone_from_b, 2.0, "B dropping the deleted video") < 2.0

    own_redis.start()
    await asyncio.sleep(1.0)
    for client in (a, b):
        assert await status_of(client, stream) == 404
        assert await status_of(client, stream, **{"If-None-Match": etag}) == 404
        assert await status_of(client, f"/videos/{video['id']}") == 404
    resp = await a.delete(f"/videos/{video['id']}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 404


async def test_an_upload_while_redis_is_down_succeeds_once_everywhere(instance, own_redis,
                                                                      database_url):
    a = await instance(redis_url=own_redis.url)
    b = await instance(redis_url=own_redis.url)
    token = await new_user_token(a)
    # B has asked for the next id already, and remembers that it is missing.
    assert await status_of(b, "/videos/1/stream") == 404

    own_redis.stop()
    resp = await upload(a, token, DATA, title="Uploaded during an outage")
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    assert video["id"] == 1
    await make_ready(a.server.app, video["id"])  # ready, still during the outage

    rows = query(database_url, "SELECT id, storage_key FROM videos")
    assert [row[0] for row in rows] == [video["id"]]
    assert stored_files(a) == [rows[0][1]]
    assert (storage_dir(a) / rows[0][1]).read_bytes() == DATA

    async def streams_everywhere() -> bool:
        for client in (a, b):
            resp = await client.get(video["stream_url"])
            if resp.status != 200 or await resp.read() != DATA:
                return False
        return True

    # Sooner than B's memory of the miss would have expired by itself.
    await until(streams_everywhere, 1.0, "the new video streaming from both processes")
    resp = await b.get(f"/videos/{video['id']}")
    assert resp.status == 200
    assert (await resp.json())["title"] == "Uploaded during an outage"


# --- PostgreSQL failing --------------------------------------------------------

async def test_an_upload_while_postgres_is_unreachable_leaves_nothing(instance, pg_proxy,
                                                                      database_url, api_error):
    a = await instance(database_url=pg_proxy.url, db_timeout=1.0)
    token = await new_user_token(a)
    pg_proxy.cut()
    resp = await upload(a, token, DATA)
    await api_error(resp, 503, "unavailable")
    assert stored_files(a) == []
    pg_proxy.restore()
    assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]


@pytest.fixture
def commit_trigger(database_url: str) -> Iterator[Callable[[str, str], None]]:
    """Installs a trigger run at COMMIT of a video insert whose title matches."""
    names: list[str] = []

    def install(title: str, body: str) -> None:
        name = f"test_commit_{secrets.token_hex(4)}"
        names.append(name)
        query(database_url, f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN {body}; RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON videos
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.title = '{title}') EXECUTE FUNCTION {name}();
        """)

    yield install
    for name in names:
        query(database_url, f"DROP TRIGGER IF EXISTS {name} ON videos;"
                            f" DROP FUNCTION IF EXISTS {name}()")


async def test_an_upload_whose_commit_is_refused_leaves_nothing(client, database_url,
                                                               commit_trigger, api_error):
    """The file was already in place when the commit failed; it goes with the row."""
    commit_trigger("refused", "RAISE EXCEPTION 'no'")
    token = await new_user_token(client)
    resp = await upload(client, token, DATA, title="refused")
    await api_error(resp, 500)
    assert stored_files(client) == []
    assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]


async def test_an_upload_cut_off_during_its_commit_keeps_a_committed_row_whole(
        instance, pg_proxy, database_url, commit_trigger, api_error):
    """Whether a commit whose answer is lost happened is unknown: the file must stay.

    Here it did happen, so removing the file would leave a row naming a missing file.
    """
    commit_trigger("slow commit", "PERFORM pg_sleep(1.5)")
    a = await instance(database_url=pg_proxy.url, db_timeout=5.0)
    b = await instance()
    token = await new_user_token(a)
    sending = asyncio.create_task(upload(a, token, DATA, title="slow commit"))
    await asyncio.sleep(0.8)  # inside the commit, which waits on the trigger
    pg_proxy.cut()
    resp = await sending
    await api_error(resp, 503, "unavailable")
    pg_proxy.restore()

    async def committed() -> bool:
        return query(database_url, "SELECT count(*) FROM videos") == [(1,)]

    await until(committed, 5.0, "the commit")
    [(video_id, key)] = query(database_url, "SELECT id, storage_key FROM videos")
    assert stored_files(a) == [key]
    await make_ready(b.server.app, video_id)
    resp = await b.get(f"/videos/{video_id}/stream")
    assert resp.status == 200
    assert await resp.read() == DATA


# --- orphaned files -------------------------------------------------------------

async def test_a_delete_whose_file_cannot_be_removed_still_happens(client, database_url, caplog):
    token = await new_user_token(client)
    resp = await upload(client, token, DATA)
    video = await resp.json()
    [key] = stored_files(client)
    path = storage_dir(client) / key
    # Something unlink() refuses (running as root, permissions would not stop it).
    path.unlink()
    (path / "inside").mkdir(parents=True)
    resp = await client.delete(f"/videos/{video['id']}",
                               headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]
    assert "orphan sweep will remove it" in caplog.text
    assert await status_of(client, video["stream_url"]) == 404


def make_orphan(directory: Path, extension: str = "mp4") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{secrets.token_hex(16)}.{extension}"
    assert STORAGE_KEY_RE.fullmatch(path.name)
    path.write_bytes(DATA)
    return path


async def test_the_sweep_removes_old_files_no_row_names_and_nothing_else(client, database_url):
    token = await new_user_token(client)
    kept, lost = [], []
    for title in ("kept", "lost"):
        resp = await upload(client, token, DATA, title=title)
        assert resp.status == 201
        (kept if title == "kept" else lost).append(await resp.json())
    await make_ready(client.server.app, kept[0]["id"])
    [(lost_key,)] = query(database_url, "SELECT storage_key FROM videos WHERE title = 'lost'")
    # As if the deleting process died between its commit and removing the file.
    query(database_url, "DELETE FROM videos WHERE title = 'lost'")
    directory = storage_dir(client)
    temp = directory / f".upload-{secrets.token_hex(16)}.part"
    temp.write_bytes(b"half an upload")
    notes = directory / "README.txt"
    notes.write_text("an operator's file")
    before = set(stored_files(client))

    catalog = client.server.app[CATALOG_KEY]
    assert await catalog.sweep_orphans(min_age=1.0) == 0  # all too young yet
    await asyncio.sleep(1.2)
    assert await catalog.sweep_orphans(min_age=1.0) == 1
    assert set(stored_files(client)) == before - {lost_key}
    resp = await client.get(kept[0]["stream_url"])
    assert resp.status == 200 and await resp.read() == DATA


async def test_the_sweep_spares_a_storage_dir_of_another_database(client, caplog):
    """Pointed at another database (a restored backup, a reset), every stored file
    would look orphaned: the marker the directory shares with its database stops it."""
    directory = storage_dir(client)
    catalog = client.server.app[CATALOG_KEY]
    assert await catalog.sweep_orphans(min_age=0.0) == 0  # claims the directory
    ours = (directory / ".tubelet" / "database-id").read_text().strip()
    orphan = make_orphan(directory)
    (directory / ".tubelet" / "database-id").write_text("00000000-0000-0000-0000-000000000000\n")
    assert await catalog.sweep_orphans(min_age=0.0) == 0
    assert orphan.exists()
    assert "belongs to database 00000000-0000-0000-0000-000000000000" in caplog.text
    (directory / ".tubelet" / "database-id").write_text(ours + "\n")
    assert await catalog.sweep_orphans(min_age=0.0) == 1
    assert not orphan.exists()


async def test_the_sweep_runs_at_start_up(instance, config, monkeypatch):
    monkeypatch.setattr(records, "ORPHAN_MIN_AGE", 0.5)
    orphan = make_orphan(config.storage_dir)
    await asyncio.sleep(0.6)
    await instance()

    async def swept() -> bool:
        return not orphan.exists()

    await until(swept, 3.0, "the start-up sweep")
