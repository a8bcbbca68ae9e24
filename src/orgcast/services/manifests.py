"""Declarative tenant manifests: ``tenants/<slug>.toml``, all validated first, then applied.

A manifest states the whole configuration of one tenant that it covers: ``slug``, ``name``,
``limits``, ``ephemeral_events`` and ``allowed_origins``. A key left out means its default (no
limit overrides, no ephemeral events, any origin), so the file is the truth for what it covers;
a tenant's status, keys and messages are outside it and never touched. Applying a directory
creates the tenants that are missing and updates the ones that differ; it never deletes a tenant
whose file is gone (deleting is always an explicit ``orgcast tenants delete``).

Validation is all-or-nothing: every file is read and checked before the database is touched, and
one invalid file means nothing is applied. Secrets never live in manifests: a key that looks like
one (``secret``, ``api_key``, ``token``, ...) is refused, because manifests are meant to be
committed to version control. Signing keys and API keys exist only in the database.

A manifest may also declare webhook endpoints, ``[[webhooks]]`` tables of ``url`` and ``events``
(and an optional ``description``), never their secrets. Each declared URL gets an endpoint if the
tenant has none with that URL, and its events are brought in line otherwise; endpoints a manifest
does not declare (made through the API or the CLI) are left alone. The secret of an endpoint made
here is generated and shown nowhere: take one with ``POST .../webhooks/{id}/rotate-secret``.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from ..errors import Invalid, NotFound, readable_message
from .tenants import Tenant, TenantCreate, TenantPatch, TenantService
from .webhooks import Description, EndpointCreate, EndpointPatch, WebhookService

SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "signing_key",
    "private_key",
    "credential",
)
DECLARED_FIELDS = ("name", "limits", "ephemeral_events", "allowed_origins")

Action = Literal["created", "updated", "unchanged"]


class DeclaredWebhook(EndpointCreate):
    """An endpoint as a manifest declares it: no secret, no enabled flag."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, exclude=True)
    description: Description | None = None


class ManifestSpec(TenantCreate):
    webhooks: list[DeclaredWebhook] = Field(default_factory=list, max_length=100)


@dataclass(frozen=True)
class Problem:
    """One reason a manifest was refused: the file, the field (dotted path) and why."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class ManifestError(Invalid):
    """One or more manifests are invalid; ``details`` lists every problem, nothing was applied."""

    code = "invalid_manifest"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n  ".join(str(problem) for problem in problems)
        super().__init__(
            f"invalid manifest; nothing was applied:\n  {lines}",
            details=[asdict(problem) for problem in problems],
        )


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and the state it declares."""

    path: Path
    spec: ManifestSpec

    @property
    def slug(self) -> str:
        return self.spec.slug

    def declared(self) -> dict[str, Any]:
        """The declared fields, normalised the way a stored tenant reads back."""
        return {
            "name": self.spec.name,
            "limits": self.spec.limits.model_dump(exclude_none=True) if self.spec.limits else {},
            "ephemeral_events": sorted(self.spec.ephemeral_events or []),
            "allowed_origins": list(self.spec.allowed_origins or []),
        }


@dataclass(frozen=True)
class Change:
    """What applying one manifest does (or did): ``fields`` lists what an update changes."""

    slug: str
    file: str
    action: Action
    fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"slug": self.slug, "file": self.file, "action": self.action, "fields": self.fields}


def _current(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "limits": dict(tenant.limits),
        "ephemeral_events": sorted(tenant.ephemeral_events),
        "allowed_origins": list(tenant.allowed_origins),
    }


def _secret_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    found: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if any(word in key.lower().replace("-", "_") for word in SECRET_WORDS):
            found.append(path)
        elif isinstance(value, dict):
            found.extend(_secret_keys(value, f"{path}."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    found.extend(_secret_keys(item, f"{path}.{i}."))
    return found


def validation_problems(file: str, exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(file)"
        problems.append(Problem(file, field, readable_message(error)))
    return problems


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest; raises ``ManifestError`` naming the file and field."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError([Problem(file, "(file)", f"cannot be read: {exc}")]) from None
    secrets = _secret_keys(data)
    if secrets:
        # Refused before anything else: the value must not end up echoed in an error message.
        raise ManifestError(
            [
                Problem(
                    file,
                    key,
                    "secrets are never kept in manifests (signing keys and API keys live only "
                    "in the database); remove this key",
                )
                for key in secrets
            ]
        )
    try:
        spec = ManifestSpec.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(validation_problems(file, exc)) from None
    if spec.slug != path.stem:
        raise ManifestError(
            [Problem(file, "slug", f"{spec.slug!r} does not match the file name {path.name!r}")]
        )
    return Manifest(path, spec)


def load_directory(directory: Path) -> list[Manifest]:
    """Every ``*.toml`` manifest in ``directory``, in file-name order; all checked before any is
    returned, so a ``ManifestError`` lists the problems of every invalid file at once."""
    if not directory.is_dir():
        raise ManifestError([Problem(str(directory), "(directory)", "no such directory")])
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("."):
            continue
        try:
            manifests.append(load_manifest(path))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return manifests


class ManifestService:
    """Plans and applies manifests through ``TenantService`` (one transaction per tenant) and
    ``WebhookService`` (declared endpoints)."""

    def __init__(self, tenants: TenantService, webhooks: WebhookService | None = None) -> None:
        self._tenants = tenants
        self._webhooks = webhooks

    async def _webhook_plan(
        self, tenant_id: int | None, manifest: Manifest
    ) -> list[tuple[str | None, DeclaredWebhook]]:
        """(existing endpoint id or None to create, declaration) for each declared endpoint that
        is missing or differs."""
        if self._webhooks is None or not manifest.spec.webhooks:
            return []
        existing = {} if tenant_id is None else {
            e["url"]: e for e in await self._webhooks.list_endpoints(tenant_id)
        }  # fmt: skip
        todo: list[tuple[str | None, DeclaredWebhook]] = []
        for declared in manifest.spec.webhooks:
            current = existing.get(declared.url)
            if current is None:
                todo.append((None, declared))
            elif (current["events"], current["description"]) != (
                declared.events,
                declared.description,
            ):
                todo.append((current["id"], declared))
        return todo

    async def plan(self, manifests: list[Manifest]) -> list[Change]:
        changes = []
        for manifest in manifests:
            file = str(manifest.path)
            try:
                tenant = await self._tenants.get(manifest.slug)
            except NotFound:
                changes.append(Change(manifest.slug, file, "created"))
                continue
            current, declared = _current(tenant), manifest.declared()
            fields = tuple(name for name in DECLARED_FIELDS if current[name] != declared[name])
            if await self._webhook_plan(tenant.id, manifest):
                fields += ("webhooks",)
            action: Action = "updated" if fields else "unchanged"
            changes.append(Change(manifest.slug, file, action, fields))
        return changes

    async def apply(self, manifests: list[Manifest], *, dry_run: bool = False) -> list[Change]:
        """Create or update each tenant to match its manifest; returns what was done."""
        changes = await self.plan(manifests)
        if dry_run:
            return changes
        by_slug = {manifest.slug: manifest for manifest in manifests}
        for change in changes:
            manifest = by_slug[change.slug]
            spec = TenantCreate.model_validate(manifest.spec.model_dump(exclude={"webhooks"}))
            if change.action == "created":
                await self._tenants.create(spec)
            elif change.action == "updated":
                declared = manifest.declared()
                names = [name for name in change.fields if name in DECLARED_FIELDS]
                if names:
                    patch = TenantPatch.model_validate({name: declared[name] for name in names})
                    await self._tenants.update(change.slug, patch)
            if change.action != "unchanged" and self._webhooks is not None:
                await self._apply_webhooks(manifest)
        return changes

    async def _apply_webhooks(self, manifest: Manifest) -> None:
        assert self._webhooks is not None
        tenant = await self._tenants.get(manifest.slug)
        for endpoint_id, declared in await self._webhook_plan(tenant.id, manifest):
            if endpoint_id is None:
                await self._webhooks.create(tenant.id, tenant.slug, declared)
            else:
                patch = EndpointPatch(events=declared.events, description=declared.description)
                await self._webhooks.update(tenant.id, tenant.slug, endpoint_id, patch)
