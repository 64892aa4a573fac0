"""Bearer-token authentication and role checks.

Tokens come from ``KARMCHARI_TOKENS`` (``name:role:token,…``) and/or a file of
``name role sha256-hex-of-token`` lines; only SHA-256 digests are kept, and a
presented token is compared with every known digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "register", "command", "finish", "heartbeat", "delete"}),
    "operator": frozenset({"read", "register", "command", "finish"}),
    # Heartbeat and finish only the jobs it owns: the scripts check that.
    "worker": frozenset({"read", "register", "heartbeat", "finish"}),
    "reader": frozenset({"read"}),
}
# How a refusal names what was asked.
ACTIONS = {
    "read": "read jobs",
    "register": "register jobs",
    "command": "command this job",
    "finish": "command this job",
    "heartbeat": "send heartbeats",
    "delete": "delete jobs",
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def can(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def owner(self) -> str:
        """The owner this caller registers jobs under, and must be to heartbeat or
        finish one: its name for a worker token, "" (none, any job) otherwise."""
        return self.name if self.role == "worker" else ""


ANONYMOUS = Principal("", "admin")


class TokenConfigError(ValueError):
    pass


# A token guessable in a few million tries is no token: at least 16 characters.
MIN_TOKEN_CHARS = 16
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenRegistry:
    def __init__(self, entries: list[tuple[str, str, bytes]] | None = None) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for name, role, digest in entries or []:
            if role not in ROLE_PERMISSIONS:
                raise TokenConfigError(f"token {name!r}: unknown role {role!r}")
            self._entries.append((digest, Principal(name, role)))

    @classmethod
    def load(cls, env_value: str = "", file_path: str = "") -> TokenRegistry:
        """Refuses (TokenConfigError) a malformed entry, a token shorter than
        MIN_TOKEN_CHARS, and a source that is given but yields no token: that
        would silently run the service without authentication."""
        entries: list[tuple[str, str, bytes]] = []
        places: list[str] = []  # where each entry was read, for the refusals
        for number, item in enumerate(filter(None, (p.strip() for p in env_value.split(","))),
                                      1):
            parts = item.split(":", 2)
            if len(parts) != 3 or not all(parts):
                raise TokenConfigError("KARMCHARI_TOKENS entries are name:role:token")
            if len(parts[2]) < MIN_TOKEN_CHARS:
                raise TokenConfigError(
                    f"KARMCHARI_TOKENS: the token of {parts[0]!r} has {len(parts[2])} "
                    f"characters; at least {MIN_TOKEN_CHARS} are needed. Make one with: "
                    f"{MAKE_TOKEN}")
            entries.append((parts[0], parts[1], _digest(parts[2])))
            places.append(f"KARMCHARI_TOKENS entry {number}")
        if env_value.strip() and not entries:
            raise TokenConfigError("KARMCHARI_TOKENS is set but names no token (entries are "
                                   "name:role:token); unset it to run without tokens")
        if file_path:
            from_file = len(entries)
            for number, line in enumerate(Path(file_path).read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 3:
                    raise TokenConfigError(f"{file_path}:{number}: expected 'name role sha256hex'")
                try:
                    digest = bytes.fromhex(parts[2])
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise TokenConfigError(f"{file_path}:{number}: not a SHA-256 hex digest")
                entries.append((parts[0], parts[1], digest))
                places.append(f"{file_path}:{number}")
            if len(entries) == from_file:
                raise TokenConfigError(
                    f"{file_path}: no token in it (lines are 'name role sha256-hex'); the "
                    "service would run without authentication")
        _refuse_duplicates(entries, places)
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        presented = _digest(token)
        found = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def _refuse_duplicates(entries: list[tuple[str, str, bytes]], places: list[str]) -> None:
    """One name with two roles, or one token listed twice, would leave the caller's
    role to whichever line comes last: refuse both, naming the lines. One name with
    several tokens of the same role stays allowed (a token being rotated)."""
    roles: dict[str, tuple[str, str]] = {}
    tokens: dict[bytes, str] = {}
    for (name, role, digest), place in zip(entries, places, strict=True):
        if digest in tokens:
            raise TokenConfigError(f"{place}: the same token as {tokens[digest]}; each token "
                                   "must be listed once")
        tokens[digest] = place
        first_role, first_place = roles.setdefault(name, (role, place))
        if first_role != role:
            raise TokenConfigError(f"{place}: {name!r} has role {role!r} here and "
                                   f"{first_role!r} at {first_place}; a name has one role")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _unauthorized() -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description="A valid bearer token is required.",
        challenges=['Bearer realm="karmchari"'], code="unauthorized")


def require(req: falcon.Request, permission: str, action: str | None = None) -> None:
    """Refuse with 403 unless the caller may do ``permission``; the refusal names
    ``action`` (by default the permission's usual action)."""
    if not req.context.principal.can(permission):
        raise falcon.HTTPForbidden(
            title="Forbidden",
            description=f"role {req.context.principal.role!r} may not "
                        f"{action or ACTIONS[permission]}",
            code="forbidden")


class AuthMiddleware:
    """Authenticates every request to a resource that declares
    ``permissions = {"GET": "read", …}``; methods it does not list are open."""

    def __init__(self, registry: TokenRegistry) -> None:
        self._registry = registry

    def process_resource(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, params: dict[str, Any]) -> None:
        req.context.principal = ANONYMOUS
        permission = getattr(resource, "permissions", {}).get(req.method)
        if permission is None or not self._registry.enabled:
            return
        if "access_token" in req.params or "token" in req.params:
            raise falcon.HTTPBadRequest(
                title="Token in query string",
                description="Send the token in the Authorization header, never in the URL.",
                code="token_in_query")
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized()
        principal = self._registry.authenticate(token.strip())
        if principal is None:
            raise _unauthorized()
        req.context.principal = principal
        # A resource may name the action its refusal states (``refusals``).
        require(req, permission, getattr(resource, "refusals", {}).get(req.method))
