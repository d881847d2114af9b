"""Roles from the command line: `python -m server admin grant EMAIL ROLE` and
`admin revoke EMAIL`, for the first administrator and for recovery.

The role is written through Standing.set_role, as the API writes it, in one
transaction with its audit log row (actor NULL, details {"via": "cli"}). Roles
are read from PostgreSQL on every request, so running servers apply the new
role to the user's next request.
"""

from __future__ import annotations

import asyncio

import aiopg

from server.accounts.policy import Action, Role
from server.accounts.standing import Standing
from server.core.changes import ChangeFeed
from server.core.db import Database, Queries, fetch_one

from . import log


class AdminError(Exception):
    """A command that cannot be carried out; its message is the one line to print."""


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise AdminError(f"unknown role {raw!r}; roles: "
                         f"{', '.join(r.value for r in Role)}") from None


async def set_role(dsn: str, email: str, role: Role, *, connect_timeout: float = 5.0) -> str:
    """Give the account with this email `role`; the line to print."""
    queries = Queries.load()
    async with asyncio.timeout(connect_timeout):
        pool = await aiopg.create_pool(dsn, minsize=1, maxsize=1, timeout=connect_timeout)
    try:
        db = Database(pool, queries)
        # The feed is never started: set_role only records the change, on commit.
        standing = Standing(db, ChangeFeed(dsn, queries))
        async with db.transaction() as cur:
            user = await fetch_one(cur, queries["moderation_user_by_email"],
                                   {"email": email.strip()})
            if user is None:
                raise AdminError(f"no account with the email {email!r}")
            if user["role"] == role.value:
                return f"{user['email']} already has the role {role.value}"
            await log.write(cur, queries, actor_id=None, action=Action.ROLE_SET,
                            target_type="user", target_id=user["id"], reason="",
                            details={"via": "cli", "from": user["role"], "to": role.value})
            await standing.set_role(cur, user["id"], role)
    finally:
        pool.close()
        await pool.wait_closed()
    return f"{user['email']} is now {role.value} (was {user['role']})"
