"""Scoped API tokens (admin): a name, a role and an expiry; shown once, kept hashed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import PrincipalDep, ServicesDep, audit
from fleet_server.roles import Role
from fleet_server.users import MAX_TOKEN_TTL_S

router = APIRouter(tags=["tokens"])


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"\S")
    role: Role
    expires_in_s: int = Field(default=90 * 24 * 3600, ge=60, le=MAX_TOKEN_TTL_S)


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    created_at: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    last_used_at: float | None


class NewTokenOut(TokenOut):
    token: str = Field(description="the secret: shown only in this response")


@router.get("/tokens")
def list_tokens(services: ServicesDep, _: PrincipalDep) -> list[TokenOut]:
    return [TokenOut(**t) for t in services.identity.list_tokens()]


@router.post("/tokens", status_code=201)
def create_token(body: TokenIn, request: Request, services: ServicesDep,
                 principal: PrincipalDep) -> NewTokenOut:
    secret, row = services.identity.create_token(
        name=body.name, role=body.role, ttl_s=body.expires_in_s, created_by=principal.name)
    audit(request, services, "token.create", row["id"],
          {"name": row["name"], "role": row["role"], "expires_at": row["expires_at"]})
    return NewTokenOut(**row, token=secret)


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, request: Request, services: ServicesDep,
                 _: PrincipalDep) -> TokenOut:
    """Revoke now: the next request with the token gets 401. Revoking twice is a no-op."""
    row = services.identity.revoke_token(token_id=token_id)
    audit(request, services, "token.revoke", token_id, {"name": row["name"]})
    return TokenOut(**row)
