"""API tokens: stored as SHA-256 digests; the clear token is shown once at creation."""

from __future__ import annotations

import hashlib
import secrets

from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    INGEST = "ingest"
    OPERATOR = "operator"
    ADMIN = "admin"


TOKEN_PREFIX = "andon_"


def hash_token(raw: str) -> str:
    """Return the digest under which a token is stored (tokens are 256-bit random)."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A bearer token for connectors and scripts, with a role and an optional plant scope."""

    name = models.CharField(max_length=128)
    role = models.CharField(max_length=16, choices=Role.choices)
    plant = models.ForeignKey("integrations.Plant", null=True, blank=True, on_delete=models.CASCADE)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        scope = f" @{self.plant}" if self.plant_id else ""
        return f"{self.name} ({self.role}{scope}, {self.prefix}…)"

    @classmethod
    def issue(cls, name: str, role: str, plant=None) -> tuple[ApiToken, str]:  # type: ignore[no-untyped-def]
        """Create a token and return it with its clear value, which is not stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            name=name, role=role, plant=plant, digest=hash_token(raw), prefix=raw[:12]
        )
        return token, raw

    def touch(self) -> None:
        """Record use, at most once a minute so the hot path rarely writes."""
        now = timezone.now()
        if self.last_used_at is None or (now - self.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class PlantAccess(models.Model):
    """Limits a web user to some plants; a user with no rows sees every plant."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="plant_access")
    plant = models.ForeignKey("integrations.Plant", on_delete=models.CASCADE)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "plant"], name="plant_access_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.plant_id}"


class OutboxState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class OutboxTask(models.Model):
    """Background work committed with the request that asked for it (a transactional outbox).

    The row is the source of truth; Celery (with Redis) or the embedded worker
    only carries the wake-up. See ``console.outbox``.
    """

    name = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=OutboxState.choices, default=OutboxState.QUEUED)
    available_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=8)
    last_error = models.TextField(blank=True, default="")
    dedup_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "available_at"], name="outbox_state_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name}#{self.pk} {self.state}"
