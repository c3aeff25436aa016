"""Request bodies of the REST API (pydantic validates them; bad input -> 422)."""

from __future__ import annotations

from pydantic import BaseModel, Field

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class PublisherIn(BaseModel):
    public_key: str = Field(max_length=4096, description="Ed25519 SubjectPublicKeyInfo PEM")
    name: str = Field(default="", max_length=128)


class EnrolmentTokenIn(BaseModel):
    group: str = Field(default="default", pattern=GROUP_PATTERN)
    ttl_s: int = Field(default=86400, ge=60)


class EnrolIn(BaseModel):
    token: str = Field(min_length=8, max_length=256)
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: str = Field(max_length=4096)
    csr: str | None = Field(default=None, max_length=16384,
                            description="PEM CSR for public_key, naming device_id (or nothing) "
                                        "in its CN: the answer then carries a certificate")


class CertificateRenewIn(BaseModel):
    certificate: str = Field(max_length=16384, description="the device's current certificate")
    csr: str = Field(max_length=16384, description="PEM CSR signed by the same key")


class DelegateOverrideIn(BaseModel):
    variant: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    delegate: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)


class DeploymentIn(BaseModel):
    bundle: str = Field(min_length=1, max_length=200, description="name@version or sha256 id")
    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    group: str | None = Field(default=None, pattern=GROUP_PATTERN)
    delegate_override: DelegateOverrideIn | None = Field(
        default=None, description="operator (variant, delegate) preference (docs/delegates.md)")
