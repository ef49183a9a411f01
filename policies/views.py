"""The policy team's screens: policies and versions, the draft editor, diffs, the golden set, evaluation runs,
comparisons and gated activation. Policy editors and admins only."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HTMX_STOP_POLLING

from inference_worker import autoclear, engine_settings
from inference_worker.runner import EngineConfig
from moderation.models import AutoClearSuspension
from policies import evaluations, golden, services
from policies import selectors as policy_selectors
from policies.forms import (
    ActivateForm,
    CompareForm,
    DraftForm,
    GoldenEditForm,
    GoldenFilterForm,
    GoldenImportConfirmForm,
    GoldenImportForm,
    PolicyCreateForm,
    PolicySettingsForm,
    RunForm,
)
from policies.lint import SWEET_SPOT, policy_lint
from policies.models import EvaluationRun, GoldenExample, Policy, PolicyVersion
from reviews import selectors
from reviews.autoclear_status import funnel_calibration_for_policy
from reviews.web import AuthedRequest, partial_wanted, redirect_to, render_page

IMPORT_SESSION_KEY = "golden_import_{policy_id}"


def _policy_editor_required(request: AuthedRequest) -> None:
    if not policy_selectors.user_is_policy_editor(request.user):
        raise PermissionDenied("Only policy editors manage policies.")


def _policy(request: AuthedRequest, slug: str) -> Policy:
    _policy_editor_required(request)
    return get_object_or_404(policy_selectors.policies_editable_by(request.user), slug=slug)


def _version(policy: Policy, number: int) -> PolicyVersion:
    return get_object_or_404(policy.versions.select_related("policy", "author"), number=number)


# --- policies and versions -------------------------------------------------------------------------


@require_GET
@login_required
def policies_list(request: AuthedRequest) -> HttpResponse:
    _policy_editor_required(request)
    policies = (
        policy_selectors.policies_editable_by(request.user).order_by("name").prefetch_related("versions")
    )
    rows = [
        {
            "policy": p,
            "active": next((v for v in p.versions.all() if v.status == PolicyVersion.Status.ACTIVE), None),
            "drafts": sum(1 for v in p.versions.all() if v.is_draft),
            "versions": len(p.versions.all()),
        }
        for p in policies
    ]
    return render_page(request, "reviews/policies/list.html", {"rows": rows})


@require_http_methods(["GET", "POST"])
@login_required
def policy_create(request: AuthedRequest) -> HttpResponse:
    """A new policy: its name and slug, and a first draft from the outline or a copy of another policy."""
    _policy_editor_required(request)
    form = PolicyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            draft = services.policy_create(
                name=form.cleaned_data["name"],
                slug=form.cleaned_data["slug"],
                description=form.cleaned_data["description"],
                text=form.first_draft_text(),
                author=request.user,
            )
        except services.PolicyRefused as exc:
            form.add_error("slug", str(exc))
        else:
            messages.success(
                request,
                f"Policy {draft.policy.name} created with draft v1. Link it to a source in its settings "
                "once a version is active.",
            )
            return redirect_to(request, reverse("reviews:policy_version", args=[draft.policy.slug, 1]))
    status = 400 if form.is_bound else 200
    return render_page(request, "reviews/policies/new.html", {"form": form}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def policy_settings(request: AuthedRequest, slug: str) -> HttpResponse:
    """Routing, QA, the activation tolerance, the funnel's target recall and the linked sources."""
    policy = _policy(request, slug)
    # The form works on its own copy: a refused POST must not change what the page header shows.
    form = PolicySettingsForm(request.POST or None, instance=Policy.objects.get(pk=policy.pk))
    if request.method == "POST" and form.is_valid():
        changed = services.policy_settings_update(
            policy=policy,
            actor=request.user,
            settings=form.policy_settings(),
            source_ids=[s.pk for s in form.cleaned_data["sources"]],
        )
        messages.success(
            request,
            f"Saved: {', '.join(c.replace('_', ' ') for c in changed)}." if changed else "No changes.",
        )
        return redirect_to(request, reverse("reviews:policy_detail", args=[policy.slug]))
    status = 400 if form.is_bound else 200
    return render_page(
        request, "reviews/policies/settings.html", {"policy": policy, "form": form}, status=status
    )


def _policy_page(
    request: AuthedRequest,
    policy: Policy,
    *,
    status: int = 200,
    run_form: RunForm | None = None,
    activate_form: ActivateForm | None = None,
    error: str = "",
) -> HttpResponse:
    context = {
        **policy_selectors.policy_overview(policy),
        "funnel": funnel_calibration_for_policy(policy),
        "can_resume": True,
        "run_form": run_form or RunForm(policy=policy),
        "activate_form": activate_form or ActivateForm(),
        "error": error,
        # Without an engine the page says what evaluation needs instead of offering a run that fails.
        "engine_connected": engine_settings.engine_connected(),
        "engine_admin": selectors.user_is_admin(request.user),
    }
    return render_page(request, "reviews/policies/detail.html", context, status=status)


@require_GET
@login_required
def policy_detail(request: AuthedRequest, slug: str) -> HttpResponse:
    return _policy_page(request, _policy(request, slug))


@require_POST
@login_required
def policy_draft_new(request: AuthedRequest, slug: str) -> HttpResponse:
    policy = _policy(request, slug)
    base = request.POST.get("from", "")
    text = _version(policy, int(base)).text if base.isdigit() else None
    draft = services.policy_draft_create(policy=policy, author=request.user, text=text)
    messages.success(request, f"Draft v{draft.number} created.")
    return redirect_to(request, reverse("reviews:policy_version", args=[policy.slug, draft.number]))


def _version_context(version: PolicyVersion, form: DraftForm | None, text: str) -> dict[str, Any]:
    return {
        "policy": version.policy,
        "version": version,
        "form": form,
        "lint": policy_lint(text),
        "sweet_spot": SWEET_SPOT,
        "runs": version.evaluation_runs.order_by("-created_at")[:20],
        "others": version.policy.versions.exclude(pk=version.pk).order_by("-number"),
    }


@require_http_methods(["GET", "POST"])
@login_required
def policy_version(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    """A draft opens in the editor (POST saves it); a published version is shown read-only."""
    policy = _policy(request, slug)
    version = _version(policy, number)
    if request.method == "GET":
        form = DraftForm(initial={"text": version.text}) if version.is_draft else None
        return render_page(
            request, "reviews/policies/version.html", _version_context(version, form, version.text)
        )
    form = DraftForm(request.POST)
    if not version.is_draft:
        raise PermissionDenied("A published version is immutable: start a new draft.")
    if form.is_valid():
        try:
            version = services.policy_draft_update(
                version=version, text=form.cleaned_data["text"], author=request.user
            )
        except services.PolicyVersionRefused as exc:
            form.add_error("text", str(exc))
        else:
            messages.success(request, f"Draft v{version.number} saved.")
            return redirect_to(request, reverse("reviews:policy_version", args=[policy.slug, version.number]))
    return _draft_refused(request, version, form)


def _draft_refused(request: AuthedRequest, version: PolicyVersion, form: DraftForm) -> HttpResponse:
    """The editor again, with the text as typed and why it was not saved (nothing is lost)."""
    text = request.POST.get("text", "")
    return render_page(
        request, "reviews/policies/version.html", _version_context(version, form, text), status=400
    )


@require_POST
@login_required
def policy_draft_lint(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    """The editor's live side panel: token count, rule ids and hints for the text as typed (not saved)."""
    policy = _policy(request, slug)
    version = _version(policy, number)
    form = DraftForm(request.POST)
    text = form.cleaned_data["text"] if form.is_valid() else request.POST.get("text", "")[:200_000]
    return render(
        request,
        "reviews/policies/version.html#draft-lint",
        # 200 even for text the save would refuse: the panel is a preview, and it shows why.
        {"version": version, "lint": policy_lint(text), "sweet_spot": SWEET_SPOT, "form_errors": form.errors},
    )


@require_POST
@login_required
def policy_version_publish(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    """Freeze a draft. From the editor the form carries the text as shown, saved or not: it is checked like a
    save, saved and published in one step, so an edit is never lost (the policy page's button sends none)."""
    policy = _policy(request, slug)
    version = _version(policy, number)
    form = DraftForm(request.POST) if "text" in request.POST and version.is_draft else None
    if form is not None and not form.is_valid():
        return _draft_refused(request, version, form)
    saved_hash = version.content_hash
    try:
        published = services.policy_version_publish(
            version=version, author=request.user, text=form.cleaned_data["text"] if form else None
        )
    except services.PolicyVersionRefused as exc:
        version.refresh_from_db(fields=["status"])  # published meanwhile (another tab)?
        if form is not None and version.is_draft:  # the text was refused (blank): say so in the editor
            form.add_error("text", str(exc))
            return _draft_refused(request, version, form)
        return _policy_page(request, policy, status=409, error=f"Not published: {exc}.")
    saved = " with your latest edits" if published.content_hash != saved_hash else ""
    messages.success(request, f"v{version.number} published{saved}: its text is now frozen.")
    return redirect_to(request, reverse("reviews:policy_detail", args=[policy.slug]))


@require_POST
@login_required
def policy_version_activate(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    policy = _policy(request, slug)
    version = _version(policy, number)
    # The reason is asked for by name where the gate is closed; a draft or the active version is refused
    # by the service below with what is really wrong.
    activatable = not version.is_draft and version.status != PolicyVersion.Status.ACTIVE
    form = ActivateForm(
        request.POST, gate_closed=activatable and not evaluations.activation_gate(version).passed
    )
    if not form.is_valid():
        reasons = " ".join(str(e) for errors in form.errors.values() for e in errors)
        return _activation_refused(request, policy, reasons, form=form, status=400)
    try:
        activation = services.policy_version_activate(
            version=version, actor=request.user, override_reason=form.cleaned_data["override_reason"]
        )
    except services.PolicyVersionRefused as exc:
        return _activation_refused(request, policy, str(exc))
    note = " (gate overridden)" if activation.overridden else ""
    messages.success(request, f"v{version.number} is now active for new cases{note}.")
    return redirect_to(request, reverse("reviews:policy_detail", args=[policy.slug]))


def _activation_refused(
    request: AuthedRequest,
    policy: Policy,
    message: str,
    *,
    form: ActivateForm | None = None,
    status: int = 409,
) -> HttpResponse:
    return _policy_page(
        request,
        policy,
        status=status,
        activate_form=form or ActivateForm(request.POST),
        error=f"Not activated: {message}",
    )


@require_GET
@login_required
def policy_diff(request: AuthedRequest, slug: str) -> HttpResponse:
    policy = _policy(request, slug)
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    if not (a.isdigit() and b.isdigit()):
        return render_page(
            request,
            "reviews/policies/diff.html",
            {
                "policy": policy,
                "error": "Choose two versions.",
                "versions": policy.versions.order_by("-number"),
            },
            status=400,
        )
    left, right = _version(policy, int(a)), _version(policy, int(b))
    context = {
        "policy": policy,
        "left": left,
        "right": right,
        "rows": policy_selectors.version_diff(left, right),
        "versions": policy.versions.order_by("-number"),
    }
    return render_page(request, "reviews/policies/diff.html", context)


# --- the golden set --------------------------------------------------------------------------------


def _golden_page(
    request: AuthedRequest, policy: Policy, *, status: int = 200, error: str = ""
) -> HttpResponse:
    form = GoldenFilterForm(request.GET or None)
    page = golden.golden_page(policy, form.filters(), request.GET.get("page", 1))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "policy": policy,
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "counts": golden.golden_counts(policy),
        "conflicts": golden.golden_conflicts_count(policy),
        "rule_ids": golden.policy_rule_ids(policy),
        "error": error,
    }
    if partial_wanted(request):
        return render(request, "reviews/policies/golden.html#golden-table", context, status=status)
    return render_page(request, "reviews/policies/golden.html", context, status=status)


@require_GET
@login_required
def golden_list(request: AuthedRequest, slug: str) -> HttpResponse:
    return _golden_page(request, _policy(request, slug))


def _example(policy: Policy, example_id: int) -> GoldenExample:
    return get_object_or_404(
        GoldenExample.objects.select_related("policy", "decision__moderator", "decision__case"),
        policy=policy,
        pk=example_id,
    )


@require_POST
@login_required
def golden_curate(request: AuthedRequest, slug: str, example_id: int, action: str) -> HttpResponse:
    policy = _policy(request, slug)
    example = _example(policy, example_id)
    try:
        if action == "accept":
            example = golden.golden_example_accept(example=example, actor=request.user)
        elif action == "reject":
            example = golden.golden_example_reject(example=example, actor=request.user)
        else:
            raise Http404("unknown curation step")
    except golden.GoldenRefused as exc:
        if partial_wanted(request):
            return render(
                request,
                "reviews/policies/golden.html#golden-row",
                {"policy": policy, "example": example, "row_error": str(exc)},
                status=409,
            )
        return _golden_page(request, policy, status=409, error=f"Example #{example.pk}: {exc}")
    if partial_wanted(request):
        return render(
            request, "reviews/policies/golden.html#golden-row", {"policy": policy, "example": example}
        )
    messages.success(request, f"Example #{example.pk} {example.status}.")
    return redirect_to(request, reverse("reviews:golden_list", args=[policy.slug]))


@require_http_methods(["GET", "POST"])
@login_required
def golden_edit(request: AuthedRequest, slug: str, example_id: int) -> HttpResponse:
    policy = _policy(request, slug)
    example = _example(policy, example_id)
    if request.method == "GET":
        form = GoldenEditForm(
            initial={
                "text": example.text,
                "expected_label": example.expected_label,
                "rule_ids": ", ".join(example.rule_ids),
                "category": example.category,
            }
        )
        status = 200
    else:
        form = GoldenEditForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                golden.golden_example_edit(
                    example=example,
                    actor=request.user,
                    text=data["text"],
                    expected_label=data["expected_label"],
                    rule_ids=[r for r in data["rule_ids"].replace(";", ",").split(",") if r.strip()],
                    category=data["category"],
                )
            except golden.GoldenRefused as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Example #{example.pk} saved.")
                return redirect_to(request, reverse("reviews:golden_list", args=[policy.slug]))
        status = 400
    context = {"policy": policy, "example": example, "form": form, "rule_ids": golden.policy_rule_ids(policy)}
    return render_page(request, "reviews/policies/golden_edit.html", context, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def golden_import(request: AuthedRequest, slug: str) -> HttpResponse:
    """Upload -> preview with per-row errors; the valid rows wait in the session for the confirmation."""
    policy = _policy(request, slug)
    key = IMPORT_SESSION_KEY.format(policy_id=policy.pk)
    if request.method == "GET":
        return render_page(
            request, "reviews/policies/golden_import.html", {"policy": policy, "form": GoldenImportForm()}
        )
    form = GoldenImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return render_page(
            request, "reviews/policies/golden_import.html", {"policy": policy, "form": form}, status=400
        )
    upload = form.cleaned_data["file"]
    data = upload.read(settings.GOLDEN_IMPORT_MAX_BYTES + 1)  # enough to tell it is too large
    preview = golden.golden_import_preview(policy=policy, name=upload.name or "", data=data)
    if preview.error:
        form.add_error("file", preview.error)
        return render_page(
            request, "reviews/policies/golden_import.html", {"policy": policy, "form": form}, status=400
        )
    request.session[key] = {"file": upload.name, "rows": [r.as_dict() for r in preview.valid]}
    context = {
        "policy": policy,
        "form": GoldenImportForm(),
        "preview": preview,
        "file_name": upload.name,
        "confirm_form": GoldenImportConfirmForm(),
    }
    return render_page(request, "reviews/policies/golden_import.html", context)


@require_POST
@login_required
def golden_import_confirm(request: AuthedRequest, slug: str) -> HttpResponse:
    policy = _policy(request, slug)
    pending = request.session.get(IMPORT_SESSION_KEY.format(policy_id=policy.pk))
    form = GoldenImportConfirmForm(request.POST)
    if not pending or not form.is_valid():
        messages.error(request, "Nothing to import: upload the file again.")
        return redirect_to(request, reverse("reviews:golden_import", args=[policy.slug]))
    rows = [golden.ImportRow(**row) for row in pending["rows"]]
    created = golden.golden_import(
        policy=policy,
        actor=request.user,
        rows=rows,
        status=form.cleaned_data["status"],
        file_name=pending["file"],
    )
    del request.session[IMPORT_SESSION_KEY.format(policy_id=policy.pk)]
    messages.success(request, f"Imported {len(created)} examples as {form.cleaned_data['status']}.")
    return redirect_to(request, reverse("reviews:golden_list", args=[policy.slug]))


# --- evaluation runs -------------------------------------------------------------------------------


@require_POST
@login_required
def evaluation_run_new(request: AuthedRequest, slug: str) -> HttpResponse:
    policy = _policy(request, slug)
    form = RunForm(request.POST, policy=policy)
    if not form.is_valid():
        return _policy_page(request, policy, status=400, run_form=form, error="Not started: check the form.")
    try:
        run = evaluations.evaluation_run_create(
            version=form.cleaned_data["version"],
            actor=request.user,
            config=EngineConfig.from_settings(),
            model=form.cleaned_data["model"].strip(),
            effort=form.cleaned_data["effort"],
        )
    except evaluations.EvaluationRefused as exc:
        reason = _no_engine_reason(request) if str(exc) == evaluations.NO_ENGINE else str(exc)
        return _policy_page(request, policy, status=409, run_form=form, error=f"Not started: {reason}.")
    return redirect_to(request, reverse("reviews:evaluation_run", args=[run.pk]))


def _no_engine_reason(request: AuthedRequest) -> str:
    """What the person who asked for a run can do about a missing engine."""
    if selectors.user_is_admin(request.user):
        return "no reasoning engine configured: connect one on the Engine page"
    return "no reasoning engine configured: ask an admin to connect a reasoning engine"


def _run(request: AuthedRequest, run_id: int) -> EvaluationRun:
    _policy_editor_required(request)
    return get_object_or_404(policy_selectors.evaluation_runs_visible_to(request.user), pk=run_id)


def _run_context(run: EvaluationRun) -> dict[str, Any]:
    return {
        "run": run,
        "policy": run.policy,
        "results": policy_selectors.run_results(run) if run.is_finished else [],
        "text_changed": run.policy_text_hash != run.policy_version.content_hash,
    }


@require_GET
@login_required
def evaluation_run(request: AuthedRequest, run_id: int) -> HttpResponse:
    run = _run(request, run_id)
    return render_page(request, "reviews/policies/run.html", _run_context(run))


@require_GET
@login_required
def evaluation_run_progress(request: AuthedRequest, run_id: int) -> HttpResponse:
    """Polled while the run goes; answers 286 (htmx: stop polling) with the results once it is over."""
    run = _run(request, run_id)
    status = HTMX_STOP_POLLING if run.is_finished else 200
    return render(request, "reviews/policies/run.html#run-body", _run_context(run), status=status)


@require_POST
@login_required
def autoclear_resume(request: AuthedRequest, slug: str, suspension_id: int) -> HttpResponse:
    """Turn a tier's auto-clear back on after QA suspended it: a person's explicit, audited call."""
    policy = _policy(request, slug)
    suspension = get_object_or_404(
        AutoClearSuspension.objects.select_related("policy_version"),
        pk=suspension_id,
        policy_version__policy=policy,
    )
    try:
        autoclear.autoclear_resume(
            suspension=suspension, actor=request.user, reason=request.POST.get("reason", "")
        )
    except autoclear.ResumeRefused as exc:
        return _policy_page(request, policy, status=400, error=f"Auto-clear not turned back on: {exc}.")
    messages.success(
        request,
        f"{suspension.get_tier_display().capitalize()} auto-clear is back on for "
        f"v{suspension.policy_version.number}; QA monitoring starts afresh.",
    )
    return redirect_to(request, reverse("reviews:policy_detail", args=[policy.slug]))


@require_POST
@login_required
def evaluation_run_cancel(request: AuthedRequest, run_id: int) -> HttpResponse:
    run = _run(request, run_id)
    try:
        evaluations.evaluation_run_cancel(run=run, actor=request.user)
    except evaluations.EvaluationRefused as exc:
        context = {**_run_context(run), "error": f"Not cancelled: {exc}."}
        return render_page(request, "reviews/policies/run.html", context, status=409)
    messages.success(request, f"Run #{run.pk} cancelled.")
    return redirect_to(request, reverse("reviews:evaluation_run", args=[run.pk]))


@require_GET
@login_required
def evaluation_runs_compare(request: AuthedRequest) -> HttpResponse:
    _policy_editor_required(request)
    form = CompareForm(request.GET)
    if not form.is_valid():
        raise Http404("choose two runs")
    runs = policy_selectors.evaluation_runs_visible_to(request.user)
    before = get_object_or_404(runs, pk=form.cleaned_data["a"])
    after = get_object_or_404(runs, pk=form.cleaned_data["b"])
    if before.policy_id != after.policy_id:
        return render_page(
            request,
            "reviews/policies/compare.html",
            {"error": "These runs are of different policies.", "policy": after.policy},
            status=400,
        )
    comparison = evaluations.runs_compare(before, after)
    return render_page(
        request, "reviews/policies/compare.html", {"comparison": comparison, "policy": after.policy}
    )
