"""API tokens and their scopes.

Clients send `Authorization: Bearer TOKEN`. Tokens are configured by either or both of:
- `MODSTREAM_API_TOKENS`: a JSON object, `{"TOKEN": ["check", ...]}`, or with a name for
  the audit, `{"TOKEN": {"name": "coop", "scopes": ["check", "banks:read"]}}`;
- `MODSTREAM_API_TOKENS_FILE`: a file of token digests, one per line,
  `NAME SHA256_HEX_OF_TOKEN SCOPE[,SCOPE...]` (`#` starts a comment), so that no secret
  needs to sit in the environment.
`MODSTREAM_API_ANONYMOUS_SCOPES` (comma-separated; default none) grants scopes to requests
without a token, for a trusted network only (HMA clients such as Coop send no token).

Only SHA-256 digests of tokens are kept in memory. A token without a name is named
`token:` and the first 8 hex digits of its digest; that name, never the token, is what logs
and audit lines show. No token (and no anonymous scope): 401; a token without the scope an
endpoint needs: 403.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.api.errors import ApiError

SCOPES = ("check", "banks:read", "banks:write", "review")
NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Principal:
    """Who made a request, as logs and audit lines name it."""

    name: str
    scopes: frozenset[str]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _scopes(raw: object, where: str) -> frozenset[str]:
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError(f"{where}: scopes must be a list of strings")
    unknown = sorted(set(raw) - set(SCOPES))
    if unknown:
        raise ValueError(f"{where}: unknown scopes {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return frozenset(raw)


class TokenTable:
    """Token digest -> Principal."""

    def __init__(self, by_digest: dict[str, Principal], anonymous: frozenset[str] = frozenset()) -> None:
        self._by_digest = dict(by_digest)
        self.anonymous = Principal("anonymous", anonymous) if anonymous else None

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_tokens(cls, tokens: dict[str, list[str]], anonymous: frozenset[str] = frozenset()) -> TokenTable:
        """From plain tokens and their scopes (tests, small setups)."""
        return cls(
            {digest(t): Principal(f"token:{digest(t)[:8]}", _scopes(s, "token")) for t, s in tokens.items()}, anonymous
        )

    @classmethod
    def from_config(cls, tokens_json: str, tokens_file: str, anonymous: str) -> TokenTable:
        """From the settings' text (see the module docstring). Raises ValueError naming the
        problem, never the token."""
        by_digest: dict[str, Principal] = {}
        if tokens_json.strip():
            try:
                table = json.loads(tokens_json)
            except json.JSONDecodeError as exc:
                raise ValueError(f"MODSTREAM_API_TOKENS is not valid JSON (at character {exc.pos})") from None
            if not isinstance(table, dict):
                raise ValueError("MODSTREAM_API_TOKENS must be a JSON object of token: scopes")
            for n, (token, spec) in enumerate(table.items(), 1):
                where = f"MODSTREAM_API_TOKENS entry {n}"
                if not isinstance(token, str) or len(token) < 16:
                    raise ValueError(f"{where}: tokens must be strings of at least 16 characters")
                name = f"token:{digest(token)[:8]}"
                if isinstance(spec, dict):
                    name = str(spec.get("name") or name)
                    spec = spec.get("scopes", [])
                if not NAME.fullmatch(name):
                    raise ValueError(f"{where}: name {name!r} must be 1-64 letters, digits or _.:@-")
                by_digest[digest(token)] = Principal(name, _scopes(spec, where))
        if tokens_file:
            by_digest.update(cls._read_file(Path(tokens_file)))
        return cls(
            by_digest, _scopes(anonymous, "MODSTREAM_API_ANONYMOUS_SCOPES") if anonymous.strip() else frozenset()
        )

    @staticmethod
    def _read_file(path: Path) -> dict[str, Principal]:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"MODSTREAM_API_TOKENS_FILE: cannot read {path}: {exc.strerror}") from None
        out = {}
        for lineno, line in enumerate(lines, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            where = f"{path} line {lineno}"
            if len(parts) != 3:
                raise ValueError(f"{where}: expected NAME SHA256_HEX SCOPE[,SCOPE...]")
            name, hexdigest, scopes = parts[0], parts[1].lower().removeprefix("sha256:"), parts[2]
            if not NAME.fullmatch(name) or not DIGEST.fullmatch(hexdigest):
                raise ValueError(f"{where}: expected NAME SHA256_HEX SCOPE[,SCOPE...]")
            out[hexdigest] = Principal(name, _scopes(scopes, where))
        return out

    def of_digest(self, hexdigest: str) -> Principal | None:
        """The principal of a token known by its SHA-256 (a console session's), if still configured."""
        return self._by_digest.get(hexdigest)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an Authorization header; raises ApiError 401."""
        challenge = {"WWW-Authenticate": 'Bearer realm="modstream"'}
        if not authorization:
            if self.anonymous is not None:
                return self.anonymous
            raise ApiError(401, "no API token: send Authorization: Bearer TOKEN", challenge)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "the Authorization header must be: Bearer TOKEN", challenge)
        principal = self._by_digest.get(digest(token.strip()))
        if principal is None:
            raise ApiError(401, "unknown API token", challenge)
        return principal

    def authorize(self, authorization: str | None, scope: str) -> Principal:
        """The principal, if it holds `scope`; raises ApiError 401 or 403."""
        principal = self.authenticate(authorization)
        if scope not in principal.scopes:
            raise ApiError(403, f"{principal.name} lacks the scope {scope!r} this endpoint needs")
        return principal
