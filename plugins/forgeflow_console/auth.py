"""Who is calling: the Airflow user of the request's JWT, validated by Airflow's own auth manager.

Plugin apps are not protected by Airflow automatically, so every console route depends on
``current_user``. It delegates to ``airflow.api_fastapi.core_api.security.get_user`` — the dependency the
Airflow REST API uses — which accepts ``Authorization: Bearer <token>`` (as issued by ``POST /auth/token``)
or the UI's JWT cookie, and answers 401 without a token, 401 for an expired one and 403 for an invalid
or revoked one. Identities (reviewer, creator) come from the token, never from request bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="A JWT from the Airflow API server's POST /auth/token.")


@dataclass(frozen=True)
class User:
    """The authenticated Airflow user."""

    name: str
    id: str


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    """The request's Airflow user; raises 401/403 as the Airflow API does."""
    # Imported on first use: it loads Airflow's API server modules, already in memory inside the server.
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request=request, _oauth_token=None, bearer_credentials=credentials)
    return User(name=user.get_name(), id=str(user.get_id()))
