from __future__ import annotations

import asyncio
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference_worker import verdicts
from inference_worker.engine import (
    EngineError,
    EngineRequest,
    engine_judge,
    engine_session,
    transport_build,
)
from inference_worker.runner import EngineConfig
from policies.models import PolicyVersion


class Command(BaseCommand):
    help = (
        "Judge one text against a policy's active version with the configured engine, and print the result."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("text")
        parser.add_argument("--policy", required=True, help="policy slug")
        parser.add_argument("--effort", choices=["low", "medium", "high"], help="default: SAFEGUARD_EFFORT")

    def handle(self, *args: Any, **options: Any) -> None:
        config = EngineConfig.from_settings()
        if not config.base_url:
            raise CommandError("no reasoning engine configured: set SAFEGUARD_BASE_URL (see README)")
        version = (
            PolicyVersion.objects.filter(policy__slug=options["policy"], status=PolicyVersion.Status.ACTIVE)
            .select_related("policy")
            .first()
        )
        if version is None:
            raise CommandError(f"no active version of policy {options['policy']!r}")
        request = EngineRequest(
            policy_text=version.text,
            content=options["text"],
            effort=options["effort"] or config.effort,
            model=config.model,
            max_tokens=config.max_tokens,
        )
        try:
            reply = asyncio.run(self._judge(config, request))
        except EngineError as exc:
            raise CommandError(f"engine error: {exc}") from exc
        verdict = verdicts.verdict_parse(reply.final_text, policy_rule_ids=version.rule_ids)
        self.stdout.write(f"policy:      {version}")
        self.stdout.write(f"verdict:     {verdict.label} ({verdict.confidence or 'no'} confidence)")
        self.stdout.write(f"category:    {verdict.policy_category or '-'}")
        self.stdout.write(f"rules:       {', '.join(verdict.rule_ids) or '-'}")
        if verdict.hallucinated_rule_ids:
            self.stdout.write(
                f"WARNING: cites rules the policy does not define: {', '.join(verdict.hallucinated_rule_ids)}"
            )
        self.stdout.write(f"rationale:   {verdict.rationale or '-'}")
        self.stdout.write(
            f"engine:      {reply.model}, effort {reply.effort}, {reply.latency_ms} ms, "
            f"tokens {reply.prompt_tokens} prompt ({reply.cached_prompt_tokens or 0} cached) / "
            f"{reply.completion_tokens} completion, finish {reply.finish_reason}"
        )
        self.stdout.write("chain of thought (model reasoning; may be wrong):")
        self.stdout.write(reply.reasoning or "(none)")

    async def _judge(self, config: EngineConfig, request: EngineRequest) -> Any:
        transport = transport_build(
            config.transport, config.base_url, config.api_key, affinity_header=config.affinity_header
        )
        async with engine_session(timeout_seconds=config.timeout_seconds, max_connections=1) as session:
            return await engine_judge(transport, session, request)
