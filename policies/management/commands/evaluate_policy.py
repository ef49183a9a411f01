from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference_worker import evaluation_runs
from inference_worker.runner import EngineConfig
from policies import evaluations, services
from policies.evaluations import ExampleIn
from policies.golden import GoldenRefused, label_parse
from policies.models import EvaluationRun, Policy, PolicyVersion

METRIC_ROWS = (
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1"),
    ("false_positive_rate", "false-positive rate"),
    ("kappa", "Cohen's kappa"),
    ("undetermined_rate", "undetermined rate"),
    ("hallucinated_rate", "hallucinated citations"),
    ("completion_tokens_mean", "completion tokens (mean)"),
    ("latency_p50_ms", "latency p50 (ms)"),
    ("latency_p95_ms", "latency p95 (ms)"),
)


class Command(BaseCommand):
    help = (
        "Evaluate a policy version over its golden set (or a JSONL file) with the configured engine, "
        "the same run as the policy page makes, and print the metrics."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # --version N names a policy version here, not Django's version banner.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--policy", required=True, help="policy slug")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--version", type=int, help="version number (default: the active version)")
        which.add_argument("--draft-file", type=Path, help="a policy text to evaluate, saved as a new draft")
        parser.add_argument(
            "--jsonl",
            type=Path,
            help="examples, one JSON object a line: text, label (violation/safe or 1/0), optional rule_ids, "
            "category or type (default: the policy's accepted golden set)",
        )
        parser.add_argument("--limit", type=int, help="evaluate only the first N examples of --jsonl")
        parser.add_argument("--effort", choices=evaluations.EFFORTS, help="default: SAFEGUARD_EFFORT")
        parser.add_argument("--model", help="default: SAFEGUARD_MODEL")

    def handle(self, *args: Any, **options: Any) -> None:
        config = EngineConfig.from_settings()
        if not config.base_url:
            raise CommandError(evaluations.NO_ENGINE)
        policy = Policy.objects.filter(slug=options["policy"]).first()
        if policy is None:
            raise CommandError(f"no policy {options['policy']!r}")
        version = self._version(policy, options)
        examples = self._examples(options["jsonl"], options["limit"]) if options["jsonl"] else None
        try:
            run = evaluations.evaluation_run_create(
                version=version,
                actor=None,
                config=config,
                examples=examples,
                dataset_label=str(options["jsonl"]) if options["jsonl"] else "",
                model=options["model"] or "",
                effort=options["effort"] or "",
                enqueue=False,
            )
        except evaluations.EvaluationRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"run #{run.pk}: {version} over {run.total} examples ({run.dataset_label})")
        evaluation_runs.evaluation_run_execute(run_id=run.pk, config=config)
        run.refresh_from_db()
        self._print(run)
        if run.status != EvaluationRun.Status.FINISHED:
            raise CommandError(f"run #{run.pk} {run.status}: {run.error}")

    def _version(self, policy: Policy, options: dict[str, Any]) -> PolicyVersion:
        if options["draft_file"]:
            text = options["draft_file"].read_text()
            author = User.objects.filter(is_superuser=True).order_by("pk").first()
            if author is None:
                raise CommandError("--draft-file needs a superuser to author the draft")
            try:
                return services.policy_draft_create(policy=policy, author=author, text=text)
            except services.PolicyVersionRefused as exc:
                raise CommandError(str(exc)) from exc
        versions = policy.versions.select_related("policy")
        version = (
            versions.filter(number=options["version"]).first()
            if options["version"]
            else versions.filter(status=PolicyVersion.Status.ACTIVE).first()
        )
        if version is None:
            raise CommandError(f"no such version of {policy.slug} (give --version N)")
        return version

    def _examples(self, path: Path, limit: int | None) -> list[ExampleIn]:
        examples = []
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = label_parse(row.get("expected_label", row.get("label")))
                text = row["text"]
            except (ValueError, KeyError, AttributeError, GoldenRefused) as exc:
                raise CommandError(f"{path}:{number}: {exc}") from exc
            rule_ids = row.get("rule_ids") or []
            examples.append(
                ExampleIn(
                    text=text,
                    expected_label=label,
                    rule_ids=rule_ids if isinstance(rule_ids, list) else [],
                    category=str(row.get("category") or row.get("type") or "")[:100],
                )
            )
            if limit and len(examples) >= limit:
                break
        return examples

    def _print(self, run: EvaluationRun) -> None:
        m = run.metrics
        self.stdout.write(f"status: {run.status}, {run.done} judged, {run.failed} failed")
        if not m:
            return
        c = m["confusion"]
        self.stdout.write(f"{'metric':<28}{'value':>10}")
        for key, label in METRIC_ROWS:
            value = m.get(key)
            shown = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            self.stdout.write(f"{label:<28}{shown:>10}")
        self.stdout.write("confusion (rows expected, columns verdict: violates / safe / undetermined)")
        self.stdout.write(
            f"  violates  {c['true_positive']:>6} {c['false_negative']:>6} {c['undetermined_positive']:>6}"
        )
        self.stdout.write(
            f"  safe      {c['false_positive']:>6} {c['true_negative']:>6} {c['undetermined_negative']:>6}"
        )
        for row in m["categories"]:
            accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            self.stdout.write(f"  category {row['category']:<28} n={row['total']:<5} accuracy {accuracy}")
