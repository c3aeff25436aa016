"""The fleet server's domain errors. HTTP status codes are assigned only in api/errors.py."""

from __future__ import annotations


class FleetError(Exception):
    """Root of the fleet server's domain errors."""


class NotFoundError(FleetError):
    """A bundle, device, group, deployment or publisher does not exist."""


class ConflictError(FleetError):
    """The request clashes with what is stored (same ref other bytes, re-enrolment)."""


class InvalidInputError(FleetError):
    """The request is well-formed but its content is unacceptable."""


class BundleRejectedError(InvalidInputError):
    """An uploaded bundle failed verification (unsigned, unknown key, corrupt)."""


class PayloadTooLargeError(FleetError):
    """An upload exceeds the configured size cap."""


class AuthError(FleetError):
    """Missing or wrong credentials."""


class ForbiddenError(FleetError):
    """Authenticated, but the role does not allow it, or a console form's CSRF token is wrong."""


class CrossOriginError(FleetError):
    """A cookie-authenticated state-changing request came from another site."""


class EnrolmentError(FleetError):
    """An enrolment token is unknown, used or expired."""


class DataDirError(FleetError):
    """The data directory cannot be created or read."""
