"""Who may do what: the one permission table. Pure; tested as role x action x ownership.

Roles rise user < moderator < admin. An owner is the author of the video or
comment, or the user themself. Moderators act on users' content and on users;
only admins act on moderators, and nobody acts on an admin through moderation
(an admin's role is revoked first, by another admin or the command line).
"""

from __future__ import annotations

from enum import StrEnum

from server.core.errors import Forbidden


class Role(StrEnum):
    USER = "user"
    MODERATOR = "moderator"
    ADMIN = "admin"


RANK = {Role.USER: 0, Role.MODERATOR: 1, Role.ADMIN: 2}


class Action(StrEnum):
    # Owners alone.
    VIDEO_EDIT = "video.edit"
    VIDEO_DELETE = "video.delete"
    COMMENT_EDIT = "comment.edit"
    COMMENT_DELETE = "comment.delete"
    PROFILE_EDIT = "profile.edit"
    # Owners, and moderators reviewing reports.
    VIDEO_SEE_HIDDEN = "video.see_hidden"
    # Owners, and moderators closing any live room.
    ROOM_END = "room.end"
    # Moderators and admins.
    MODERATION_READ = "moderation.read"
    VIDEO_REMOVE = "video.remove"
    VIDEO_RESTORE = "video.restore"
    COMMENT_REMOVE = "comment.remove"
    COMMENT_RESTORE = "comment.restore"
    REPORT_DISMISS = "report.dismiss"
    USER_BAN = "user.ban"
    USER_UNBAN = "user.unban"
    # Admins.
    ROLE_SET = "role.set"


OWNER_ONLY = frozenset({Action.VIDEO_EDIT, Action.VIDEO_DELETE, Action.COMMENT_EDIT,
                        Action.COMMENT_DELETE, Action.PROFILE_EDIT})
MODERATOR_ACTIONS = frozenset({Action.MODERATION_READ, Action.VIDEO_REMOVE,
                               Action.VIDEO_RESTORE, Action.COMMENT_REMOVE,
                               Action.COMMENT_RESTORE, Action.REPORT_DISMISS, Action.USER_BAN,
                               Action.USER_UNBAN})
# Actions whose target is a user (or that user's content), so the target's role matters.
ON_USERS = frozenset({Action.USER_BAN, Action.USER_UNBAN, Action.VIDEO_REMOVE,
                      Action.VIDEO_RESTORE, Action.COMMENT_REMOVE, Action.COMMENT_RESTORE,
                      Action.REPORT_DISMISS})


def allowed(role: Role, action: Action, *, owner: bool = False,
            target_role: Role | None = None) -> bool:
    """Whether a user with `role` may take `action`.

    `owner`: the actor owns the target. `target_role`: the role of the user the
    action is taken on (or whose content it is), where there is one.
    """
    if action in OWNER_ONLY:
        return owner
    if action in (Action.VIDEO_SEE_HIDDEN, Action.ROOM_END):
        return owner or RANK[role] >= RANK[Role.MODERATOR]
    if action in MODERATOR_ACTIONS:
        if RANK[role] < RANK[Role.MODERATOR]:
            return False
        if action in ON_USERS:
            # Never on oneself; never on an admin; on a moderator only as an admin.
            if owner or target_role is Role.ADMIN:
                return False
            if target_role is Role.MODERATOR and role is not Role.ADMIN:
                return False
        return True
    if action is Action.ROLE_SET:
        return role is Role.ADMIN and not owner
    return False


def require(role: Role, action: Action, *, owner: bool = False,
            target_role: Role | None = None) -> None:
    """Raise Forbidden (403) unless `allowed`."""
    if not allowed(role, action, owner=owner, target_role=target_role):
        raise Forbidden(f"Not allowed: {action.value}")
