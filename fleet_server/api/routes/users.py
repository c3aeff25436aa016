"""People (admin): add users, change their role, disable them; ``GET /me`` for anyone."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import PrincipalDep, ServicesDep, audit
from fleet_server.roles import Role
from fleet_server.users import MAX_PASSWORD, MIN_PASSWORD, USERNAME_PATTERN

router = APIRouter(tags=["users"])


class UserIn(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: Role


class UserPatch(BaseModel):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class UserOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    created_at: float
    created_by: str
    updated_at: float
    last_login_at: float | None


class MeOut(BaseModel):
    name: str
    role: Role
    kind: str


@router.get("/me")
def me(principal: PrincipalDep) -> MeOut:
    """Who the credentials belong to and their role."""
    return MeOut(name=principal.name, role=principal.role, kind=principal.kind)


@router.get("/users")
def list_users(services: ServicesDep, _: PrincipalDep) -> list[UserOut]:
    return [UserOut(**u) for u in services.identity.list_users()]


@router.post("/users", status_code=201)
def add_user(body: UserIn, request: Request, services: ServicesDep,
             principal: PrincipalDep) -> UserOut:
    row = services.identity.add_user(username=body.username, password=body.password,
                                     role=body.role, created_by=principal.name)
    audit(request, services, "user.add", body.username, {"role": body.role.value})
    return UserOut(**row)


@router.patch("/users/{username}")
def update_user(username: str, body: UserPatch, request: Request, services: ServicesDep,
                _: PrincipalDep) -> UserOut:
    """Change the role, disable/enable, or set a new password. A disabled user's console
    sessions end at once; a role change applies to the next request."""
    row = services.identity.update_user(
        username=username, role=body.role, disabled=body.disabled, password=body.password)
    if body.disabled:
        services.sessions.drop_user(username)
    detail: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"password"})
    if body.password is not None:
        detail["password"] = "changed"  # noqa: S105 - audit placeholder, the password is never logged
    audit(request, services, "user.update", username, detail)
    return UserOut(**row)
