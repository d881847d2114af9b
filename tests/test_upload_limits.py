"""Uploads begun (multipart and tus alike) are limited per account and per address,
across app instances: 429 with Retry-After, and the tus headers on a tus answer."""

from __future__ import annotations

from typing import Any

from server.core.config import RateSpec

from .conftest import fake_mp4, new_user_token, upload
from .test_tus import b64, tus

LIMIT = RateSpec(2, 3600)


async def tus_create(client: Any, token: str, length: int = 4096) -> Any:
    return await client.post("/uploads", headers=tus(
        token, Upload_Length=str(length), Upload_Metadata=f"title {b64('A clip')}"))


async def test_multipart_uploads_are_limited_per_account_across_instances(instance, api_error):
    a = await instance(rate_limit_upload=LIMIT)
    b = await instance(rate_limit_upload=LIMIT)
    token = await new_user_token(a)
    assert (await upload(a, token, fake_mp4(4096, 1))).status == 201
    assert (await upload(b, token, fake_mp4(4096, 2))).status == 201
    resp = await upload(a, token, fake_mp4(4096, 3))
    await api_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    # Another account has its own budget.
    assert (await upload(b, await new_user_token(a), fake_mp4(4096, 4))).status == 201


async def test_tus_creation_shares_the_budget_and_keeps_the_tus_headers(instance, api_error):
    a = await instance(rate_limit_upload=LIMIT)
    token = await new_user_token(a)
    # Refused before it began (too large): not counted.
    resp = await tus_create(a, token, length=10**15)
    assert resp.status == 413
    assert (await upload(a, token, fake_mp4(4096, 1))).status == 201
    resp = await tus_create(a, token)
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    resp = await tus_create(a, token)
    await api_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    await api_error(await upload(a, token, fake_mp4(4096, 2)), 429)
    # The upload begun within the limit goes on: only beginning one is counted.
    resp = await a.patch(location, data=fake_mp4(4096, 3), headers=tus(
        token, Upload_Offset="0", Content_Type="application/offset+octet-stream"))
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == "4096"


async def test_an_address_carries_a_few_accounts_but_not_more(instance, api_error):
    a = await instance(rate_limit_upload=RateSpec(1, 3600))
    # Three times the account limit per address (ActionThrottle.ADDRESS_FACTOR).
    for seed in range(3):
        assert (await upload(a, await new_user_token(a), fake_mp4(4096, seed))).status == 201
    await api_error(await upload(a, await new_user_token(a), fake_mp4(4096, 9)), 429)
