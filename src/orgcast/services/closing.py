"""Why the server closes a socket: the payload of ``closing {code, message}``, sent before every
disconnect the server decides on, so a client knows whether to reconnect, refresh, or give up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Closing:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


AUTH_EXPIRED = Closing("auth_expired", "the token expired; reconnect with a new one")
KEY_REVOKED = Closing("key_revoked", "the key that signed the token was revoked")
TENANT_SUSPENDED = Closing("tenant_suspended", "the tenant was suspended")
TENANT_DELETED = Closing("tenant_deleted", "the tenant was deleted")
KICKED = Closing("kicked", "disconnected by the tenant")
SHUTDOWN = Closing("shutdown", "the server is shutting down; reconnect")
