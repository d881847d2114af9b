"""The permission table, every role x action x ownership x target role, written out
by hand so a change to the policy shows up here as a changed line."""

from __future__ import annotations

import itertools

import pytest

from server.accounts.policy import Action, Role, allowed, require
from server.core.errors import Forbidden

U, M, A = Role.USER, Role.MODERATOR, Role.ADMIN

# Actions on someone's content or on a user. For each acting role, one letter per
# target: Y allowed, - refused, in the order
#   a user's, a moderator's, an admin's, one's own (owner), and no target role
#   given (the check a handler makes before it knows the target).
ON_TARGETS: dict[Action, dict[Role, str]] = {
    action: {U: "-----", M: "Y---Y", A: "YY--Y"}
    for action in (Action.VIDEO_REMOVE, Action.VIDEO_RESTORE, Action.COMMENT_REMOVE,
                   Action.COMMENT_RESTORE, Action.USER_BAN, Action.USER_UNBAN,
                   # A report about someone: nobody buries one about themself or an admin.
                   Action.REPORT_DISMISS)
}
# Same letters, for actions where only ownership matters.
BY_OWNERSHIP: dict[Action, dict[Role, str]] = {
    **{action: {U: "---Y-", M: "---Y-", A: "---Y-"}
       for action in (Action.VIDEO_EDIT, Action.VIDEO_DELETE, Action.COMMENT_EDIT,
                      Action.COMMENT_DELETE, Action.PROFILE_EDIT)},
    Action.VIDEO_SEE_HIDDEN: {U: "---Y-", M: "YYYYY", A: "YYYYY"},
    Action.ROOM_END: {U: "---Y-", M: "YYYYY", A: "YYYYY"},
    Action.MODERATION_READ: {U: "-----", M: "YYYYY", A: "YYYYY"},
    # Setting roles: admins, on anyone but themselves.
    Action.ROLE_SET: {U: "-----", M: "-----", A: "YYY-Y"},
}
TABLE = {**ON_TARGETS, **BY_OWNERSHIP}
# (owner, target_role) for each letter position.
COLUMNS: tuple[tuple[bool, Role | None], ...] = (
    (False, U), (False, M), (False, A), (True, None), (False, None))


def test_the_table_covers_every_action():
    assert set(TABLE) == set(Action)


CASES = [
    (role, action, owner, target, TABLE[action][role][column] == "Y")
    for action, role in itertools.product(Action, Role)
    for column, (owner, target) in enumerate(COLUMNS)
]


@pytest.mark.parametrize("role, action, owner, target_role, expected", CASES,
                         ids=[f"{r.value}-{a.value}-{'own' if o else t or 'none'}-"
                              f"{'yes' if e else 'no'}" for r, a, o, t, e in CASES])
def test_allowed(role, action, owner, target_role, expected):
    assert allowed(role, action, owner=owner, target_role=target_role) is expected
    if expected:
        require(role, action, owner=owner, target_role=target_role)
    else:
        with pytest.raises(Forbidden) as info:
            require(role, action, owner=owner, target_role=target_role)
        assert info.value.status == 403


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", sorted(ON_TARGETS))
@pytest.mark.parametrize("target_role", list(Role))
def test_nobody_moderates_their_own_content_or_themself(role, action, target_role):
    # Whatever role the owner has (they are the actor), owning the target refuses.
    assert not allowed(role, action, owner=True, target_role=target_role)


def test_owner_only_actions_ignore_rank():
    for action in (Action.VIDEO_EDIT, Action.COMMENT_DELETE):
        assert not allowed(A, action, owner=False, target_role=U)
        assert allowed(U, action, owner=True)
