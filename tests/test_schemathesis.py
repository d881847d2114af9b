"""Schemathesis fuzzes a real server (`python -m server` on a socket) from its own
/openapi.json: no 5xx, and every answer conforms to the document.

The fuzzing user is an administrator, so the moderation endpoints are reached past
their 403; another user owns a video (id 1), a comment and a report for the
generated ids to find. Left out, since random bytes say nothing about them: the
binary uploads (POST /videos/upload, PUT /users/me/avatar) and tus (/uploads),
which tests/test_videos.py, tests/test_profiles.py and tests/test_tus.py drive
with real clients and real files.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.core.config import ENVIRONMENT

from .conftest import REDIS_URL, fake_mp4, query, temporary_database
from .outages import free_port

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Examples per operation and generation mode: about a minute for the whole API.
MAX_EXAMPLES = 12
SKIPPED_PATHS = ("/videos/upload", "/users/me/avatar", "/uploads", "/uploads/{id}")
START_TIMEOUT = 30.0
PASSWORD = "correct horse battery"


def server_env(database_url: str, prefix: str, storage: Path, port: int) -> dict[str, str]:
    ours = {variable.name for variable in ENVIRONMENT} | {"DATA_DIR"}
    env = {name: value for name, value in os.environ.items() if name not in ours}
    env.update(HOST="127.0.0.1", PORT=str(port), DATABASE_URL=database_url,
               REDIS_URL=REDIS_URL, REDIS_PREFIX=prefix, STORAGE_DIR=str(storage),
               JWT_SECRET="fuzz-secret-" + "0123456789abcdef" * 4, BCRYPT_ROUNDS="4",
               ACCESS_LOG="0")
    return env


def wait_until_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer within {START_TIMEOUT} s")


def account(base: str, database_url: str, role: str = "user") -> tuple[int, str]:
    """A new account (with `role`) and its access token."""
    creds = {"email": f"fuzz-{secrets.token_hex(4)}@example.com", "password": PASSWORD}
    resp = requests.post(f"{base}/auth/register", json=creds, timeout=10)
    assert resp.status_code == 201, resp.text
    user_id = resp.json()["id"]
    if role != "user":
        query(database_url, "UPDATE users SET role = %s WHERE id = %s", (role, user_id))
    resp = requests.post(f"{base}/auth/login", json=creds, timeout=10)
    assert resp.status_code == 200, resp.text
    return user_id, resp.json()["access_token"]


def seed(base: str, database_url: str) -> str:
    """Another user's video, comment and report, then the administrator's token."""
    _, author = account(base, database_url)
    bearer = {"Authorization": f"Bearer {author}"}
    resp = requests.post(f"{base}/videos/upload", headers=bearer, timeout=30,
                         data={"title": "Fuzzed"}, files={"file": ("v.mp4", fake_mp4(4096))})
    assert resp.status_code == 201, resp.text
    video_id = resp.json()["id"]
    # Ready as uploaded, without a processing worker.
    query(database_url, "UPDATE videos SET status = 'ready', progress = NULL WHERE id = %s",
          (video_id,))
    resp = requests.post(f"{base}/videos/{video_id}/comments", headers=bearer, timeout=10,
                         json={"body": "First"})
    assert resp.status_code == 201, resp.text
    _, admin = account(base, database_url, "admin")
    resp = requests.post(f"{base}/reports", headers={"Authorization": f"Bearer {admin}"},
                         json={"target_type": "video", "target_id": video_id,
                               "reason": "spam"}, timeout=10)
    assert resp.status_code == 201, resp.text
    return admin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, an administrator's access token) of a server on a free port."""
    prefix = f"tubelet-fuzz-{secrets.token_hex(6)}"
    storage = tmp_path_factory.mktemp("fuzz") / "storage"
    with temporary_database("tubelet_fuzz") as database_url:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=server_env(database_url, prefix, storage, port))
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base, proc)
            yield base, seed(base, database_url)
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            # What the server logged, for a failure's report.
            sys.stderr.write(err.decode(errors="replace")[-20000:])
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()


def fuzz(operation: Any, mode: schemathesis.GenerationMode, session: requests.Session,
         headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(session=session, headers=headers, checks=CHECKS, timeout=30)

    run()


def test_fuzzed_requests_get_no_5xx_and_documented_answers(server: tuple[str, str]) -> None:
    base, token = server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    schema.config.base_url = base
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    fuzzed = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in SKIPPED_PATHS:
                continue
            fuzzed += 1
            for mode in (schemathesis.GenerationMode.POSITIVE,
                         schemathesis.GenerationMode.NEGATIVE):
                try:
                    fuzz(operation, mode, session, headers)
                except Unsatisfiable:
                    # Nothing in the operation can be made invalid (GET /healthz).
                    assert mode is schemathesis.GenerationMode.NEGATIVE
                except (Exception, BaseExceptionGroup) as exc:
                    # Schemathesis reports what its checks found as a group.
                    failures.append(f"{operation.method.upper()} {operation.path} ({mode}): "
                                    f"{exc}")
    assert not failures, "\n\n".join(failures)
    assert fuzzed >= 45
