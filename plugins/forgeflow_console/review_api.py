"""JSON endpoints of human sampling review (seed 001 §2.1.5): standards, tasks, next record, verdicts, report.

Mounted under ``/forgeflow/api/review``. Every route needs an Airflow JWT (``auth.current_user``); the
reviewer of a verdict and the creator of a task or standard are the token's user. Errors of the service
(``tasks.review.ReviewError``) answer with their status (404 unknown, 403 not assigned, 409 state clash,
422 invalid) and ``{"detail": message}``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from tasks import review
from tasks.catalog import Catalog, CatalogError
from tasks.settings import get_settings
from tasks.storage import Lake

from .auth import User, current_user


class _ReviewErrors(APIRoute):
    """Turns service errors into JSON answers wherever the router is mounted."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except review.ReviewError as e:
                return JSONResponse({"detail": str(e)}, status_code=e.status_code)
            except CatalogError as e:
                return JSONResponse({"detail": str(e)}, status_code=422)

        return handle


@lru_cache(maxsize=4)
def _catalog_for(url: str) -> Catalog:
    # Catalog.from_settings creates the home directory and migrates; once per catalogue per process.
    return Catalog.from_settings(migrate=True)


def get_catalog() -> Catalog:
    """The catalogue of this installation (a dependency: tests override it)."""
    return _catalog_for(get_settings().catalog_url)


def get_lake() -> Lake:
    """The lake of this installation (a dependency: tests override it)."""
    return Lake.from_settings()


UserDep = Annotated[User, Depends(current_user)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
LakeDep = Annotated[Lake, Depends(get_lake)]

router = APIRouter(prefix="/api/review", tags=["review"], route_class=_ReviewErrors)


class StandardUpdate(BaseModel):
    """An edit of a standard; what is left out stays as it is."""

    description: str | None = Field(default=None, description="New description.")
    items: list[review.StandardItem] | None = Field(default=None, description="The new list of items.")


class RestoreRequest(BaseModel):
    names: list[str] | None = Field(default=None, description="Presets to restore; empty means all.")


class TaskCreate(BaseModel):
    """A new review task; its creator is the caller."""

    version: str = Field(description="Dataset version SCENE/NAME@Vn (latest/published are pinned).")
    standard: str = Field(description="Evaluation standard name.")
    sample_size: int = Field(description="Records to sample (all when the version has fewer).")
    seed: int = Field(default=0, description="Sampling seed.")
    reviewers: list[str] = Field(description="Reviewer user names.")
    assignment: str = Field(default="round_robin", description="round_robin or balanced.")
    name: str = Field(default="", description="Task name (default: derived from the version).")


class NextItem(BaseModel):
    item: review.ReviewItemOut | None = Field(
        description="The caller's next record; None when all are judged."
    )
    progress: review.Progress = Field(description="The task's progress.")


class WrittenReport(BaseModel):
    uri: str = Field(description="Lake URI of the report JSON.")
    report: review.ReviewReport = Field(description="The report.")


# ---------------------------------------------------------------------------------------------- standards
@router.get("/standards", response_model=list[review.StandardOut])
def list_standards(user: UserDep, cat: CatalogDep):
    """All evaluation standards (the presets are loaded on first use)."""
    return review.list_standards(cat)


@router.get("/standards/{name}", response_model=review.StandardOut)
def get_standard(name: str, user: UserDep, cat: CatalogDep):
    return review.get_standard(name, cat)


@router.post("/standards", response_model=review.StandardOut, status_code=status.HTTP_201_CREATED)
def create_standard(body: review.StandardIn, user: UserDep, cat: CatalogDep):
    """A new standard (typically a preset copied and edited)."""
    return review.create_standard(body, created_by=user.name, catalog=cat)


@router.put("/standards/{name}", response_model=review.StandardOut)
def update_standard(name: str, body: StandardUpdate, user: UserDep, cat: CatalogDep):
    """Edit a standard; tasks already created keep the snapshot they took."""
    return review.update_standard(name, description=body.description, items=body.items, catalog=cat)


@router.delete("/standards/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_standard(name: str, user: UserDep, cat: CatalogDep) -> Response:
    review.delete_standard(name, cat)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/standards/restore", response_model=list[review.StandardOut])
def restore_presets(body: RestoreRequest, user: UserDep, cat: CatalogDep):
    """Put presets back as include/review/standards.yaml defines them."""
    return review.restore_presets(body.names or None, cat)


# ---------------------------------------------------------------------------------------------- tasks
@router.post("/tasks", response_model=review.ReviewTaskOut, status_code=status.HTTP_201_CREATED)
def create_task(body: TaskCreate, user: UserDep, cat: CatalogDep, lake: LakeDep):
    """Sample the version and assign the records; the caller is the creator."""
    return review.create_task(body.model_dump(), created_by=user.name, catalog=cat, lake=lake)


@router.get("/tasks", response_model=list[review.ReviewTaskOut])
def list_tasks(
    user: UserDep,
    cat: CatalogDep,
    status_: Annotated[str | None, Query(alias="status", description="pending, in_progress or done")] = None,
    version: Annotated[str | None, Query(description="SCENE/NAME or SCENE/NAME@Vn")] = None,
    mine: Annotated[bool, Query(description="Only tasks the caller reviews")] = False,
):
    return review.list_tasks(
        status=status_, version=version, reviewer=user.name if mine else None, catalog=cat
    )


@router.get("/tasks/{task_id}", response_model=review.ReviewTaskOut)
def get_task(task_id: int, user: UserDep, cat: CatalogDep):
    return review.get_task(task_id, cat)


@router.get("/tasks/{task_id}/items", response_model=list[review.ReviewItemOut])
def list_items(
    task_id: int,
    user: UserDep,
    cat: CatalogDep,
    mine: Annotated[bool, Query(description="Only the caller's records")] = True,
    decided: Annotated[bool | None, Query(description="true: judged, false: open")] = None,
):
    """A task's records in sample order (for previous/next navigation)."""
    return review.list_items(task_id, reviewer=user.name if mine else None, decided=decided, catalog=cat)


@router.get("/tasks/{task_id}/items/{item_id}", response_model=review.ReviewItemOut)
def get_item(task_id: int, item_id: int, user: UserDep, cat: CatalogDep):
    return review.get_item(task_id, item_id, cat)


@router.get("/tasks/{task_id}/next", response_model=NextItem)
def next_item(task_id: int, user: UserDep, cat: CatalogDep):
    """The caller's next unjudged record (403 when the caller is not a reviewer of the task)."""
    item = review.next_item(task_id, user.name, cat)
    return NextItem(item=item, progress=review.progress(task_id, cat))


@router.post("/tasks/{task_id}/items/{item_id}/verdict", response_model=review.ReviewItemOut)
def submit_verdict(task_id: int, item_id: int, body: review.VerdictIn, user: UserDep, cat: CatalogDep):
    """Pass or Fail (with problem tags) by the record's assigned reviewer; replaceable until 100 %."""
    return review.submit_verdict(task_id, item_id, user.name, body, cat)


@router.get("/tasks/{task_id}/progress", response_model=review.Progress)
def get_progress(task_id: int, user: UserDep, cat: CatalogDep):
    return review.progress(task_id, cat)


@router.get("/tasks/{task_id}/report", response_model=review.ReviewReport)
def get_report(
    task_id: int,
    user: UserDep,
    cat: CatalogDep,
    partial: Annotated[bool, Query(description="Allow a report before 100 % (flagged partial)")] = False,
):
    """The quality report (409 before 100 % unless partial=true)."""
    return review.report(task_id, partial=partial, catalog=cat)


@router.post("/tasks/{task_id}/report", response_model=WrittenReport)
def write_report(
    task_id: int,
    user: UserDep,
    cat: CatalogDep,
    lake: LakeDep,
    partial: Annotated[bool, Query(description="Write a partial report before 100 %")] = False,
):
    """Write the report as JSON into the lake, next to the version."""
    return review.write_report(task_id, partial=partial, catalog=cat, lake=lake)
