"""Every write through /admin/ is an event in the hash-chained audit log, not only a django_admin_log row.

`AuditedModelAdmin` records `<name>.created`, `<name>.changed` (the changed fields and many-to-many sets,
before and after) and `<name>.deleted` (the row as it was) in the admin's own transaction, actor the admin
user. Secrets (password hashes, API key hashes, HMAC secrets) never reach a payload: they read "changed".
Django's User and Group admins are registered again here with the same hooks, and an admin setting someone's
password records `user.password_changed`.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, Permission, User
from django.db import models, transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.forms.formsets import BaseFormSet
from django.http import HttpRequest, HttpResponse

from audit import services as audit
from audit.models import ApiToken

ModelT = TypeVar("ModelT", bound=models.Model)

# Field names whose values are never written to the log, on any model.
SECRET_FIELDS = frozenset({"password", "api_key_hash", "hmac_secret", "key_hash"})
_BEFORE = "_audit_before"

Snapshot = dict[str, Any]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _label(obj: models.Model) -> str:
    if isinstance(obj, Permission):
        return f"{obj.content_type.app_label}.{obj.codename}"
    slug = getattr(obj, "slug", None)
    return slug if isinstance(slug, str) and slug else str(obj)


def snapshot(obj: models.Model) -> Snapshot:
    """The row's fields (foreign keys as "<label> (#<id>)") and its many-to-many sets as sorted labels."""
    values: Snapshot = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.is_relation:
            related_id = getattr(obj, field.attname)
            related = getattr(obj, field.name) if related_id is not None else None
            values[field.name] = None if related is None else f"{_label(related)} (#{related_id})"
        else:
            values[field.name] = getattr(obj, field.attname)
    if obj.pk is not None:
        for m2m in obj._meta.many_to_many:
            related_qs = getattr(obj, m2m.name).all()
            if m2m.related_model is Permission:
                related_qs = related_qs.select_related("content_type")
            values[m2m.name] = sorted(_label(o) for o in related_qs)
    return values


def _secret_state(name: str, value: Any) -> str:
    if name == "password" and isinstance(value, str) and value.startswith("!"):
        return "disabled"  # Django's unusable password
    return "set" if value else "empty"


def fields_for_log(values: Snapshot) -> dict[str, Any]:
    return {
        name: _secret_state(name, value) if name in SECRET_FIELDS else _jsonable(value)
        for name, value in values.items()
    }


def changes_for_log(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """{field: [before, after]} for what changed; a secret that changed reads "changed"."""
    changes: dict[str, Any] = {}
    for name, value in after.items():
        if before.get(name) == value:
            continue
        changes[name] = (
            "changed" if name in SECRET_FIELDS else [_jsonable(before.get(name)), _jsonable(value)]
        )
    return changes


class AuditedModelAdmin(admin.ModelAdmin[ModelT]):
    """A ModelAdmin whose every save and delete is also an audit event (see the module's docstring)."""

    # The event name's prefix: "<audit_name>.changed". Empty: the model's name.
    audit_name = ""

    def audit_action(self, verb: str) -> str:
        return f"{self.audit_name or self.model._meta.model_name}.{verb}"

    def save_model(self, request: HttpRequest, obj: ModelT, form: Any, change: bool) -> None:
        stored = type(obj)._base_manager.filter(pk=obj.pk).first() if change and obj.pk is not None else None
        # Many-to-many sets are saved later (save_related): their "before" is read now, from the database.
        setattr(form, _BEFORE, snapshot(stored) if stored is not None else None)
        super().save_model(request, obj, form, change)

    def save_related(
        self, request: HttpRequest, form: ModelForm[ModelT], formsets: list[BaseFormSet[Any]], change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        after = snapshot(obj)
        before: Snapshot | None = getattr(form, _BEFORE, None)
        if before is None:
            audit.record(
                self.audit_action("created"),
                actor=request.user,  # type: ignore[arg-type]
                obj=obj,
                payload={"via": "admin", "fields": fields_for_log(after)},
            )
            return
        changes = changes_for_log(before, after)
        if changes:
            audit.record(
                self.audit_action("changed"),
                actor=request.user,  # type: ignore[arg-type]
                obj=obj,
                payload={"via": "admin", "object": str(obj), "changes": changes},
            )

    def delete_model(self, request: HttpRequest, obj: ModelT) -> None:
        # Recorded first (the row still has its id); the admin's transaction drops both if the delete fails.
        audit.record(
            self.audit_action("deleted"),
            actor=request.user,  # type: ignore[arg-type]
            obj=obj,
            payload={"via": "admin", "object": str(obj), "fields": fields_for_log(snapshot(obj))},
        )
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> None:
        with transaction.atomic():
            rows = list(queryset)
            audit.record_many(
                self.audit_action("deleted"),
                actor=request.user,  # type: ignore[arg-type]
                objects=[
                    (obj, {"via": "admin", "object": str(obj), "fields": fields_for_log(snapshot(obj))})
                    for obj in rows
                ],
            )
            super().delete_queryset(request, queryset)


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedModelAdmin[User], UserAdmin[User]):
    """Django's user admin; active, staff and superuser flags, groups and permissions are audited."""

    audit_name = "user"

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        with transaction.atomic():
            target = self.get_object(request, unquote(id))  # None for an unknown id: the view answers 404
            before = target.password if target is not None else None
            response = super().user_change_password(request, id, form_url)
            user = User.objects.filter(pk=target.pk).first() if target is not None else None
            if user is not None and user.password != before:
                audit.record(
                    "user.password_changed",
                    actor=request.user,  # type: ignore[arg-type]
                    obj=user,
                    payload={
                        "via": "admin",
                        "object": user.get_username(),
                        "password": "changed" if user.has_usable_password() else "disabled",
                    },
                )
        return response


@admin.register(Group)
class AuditedGroupAdmin(AuditedModelAdmin[Group], GroupAdmin):
    """Role groups: a change to their permissions changes what every member may do."""

    audit_name = "group"


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedModelAdmin[ApiToken]):
    """Tokens are made by their owner on the audit page; here an admin can only see and revoke them."""

    audit_name = "api_token"

    list_display = ("name", "user", "key_id", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    fields = ("name", "user", "key_id", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("name", "user", "key_id", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        return False
