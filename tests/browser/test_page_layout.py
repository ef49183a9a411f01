"""The policy team's wide pages fit a laptop and a desktop screen (issue 17 item 6).

At 1024 and 1440 px the evaluation run, the comparison, the golden set and the metrics page keep every element
inside its card: a table too wide for its card scrolls inside its own wrapper (``.table-scroll``) instead of
being clipped or pushing the card wider, and table headers and numbers never break inside a word ("Expect /
ed", "0.0 / 00"). The data is made to stress the layout: many rules, long category names, long texts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from accounts.roles import Role
from moderation.models import Case
from policies import evaluation_metrics, evaluations
from policies import services as policy_services
from policies.models import EvaluationResult, EvaluationRun, Policy, PolicyVersion
from reviews import rollups
from reviews.models import Decision
from tests.browser.conftest import Tab, screenshot, user_with_role
from tests.browser.sessions import log_in
from tests.conftest import ApiClient
from tests.policies.evaluation_helpers import golden_accepted
from tests.reviews.helpers import cases_create

pytestmark = pytest.mark.browser

WIDTHS = (1024, 1440)
RULES = [f"HARASS-{n}.{n % 3}" for n in range(1, 15)]
CATEGORIES = [
    "coordinated inauthentic behaviour and fake engagement networks",
    "unsolicited commercial promotion in private messages",
    "impersonation of officials",
    "financial scams (advance fee, fake giveaways, crypto doubling)",
    "",
]
LONG_WORD = "zorblax" * 30  # an unbroken word longer than any column

# Every element inside a card ends at the card's right edge, unless it is inside a scroll wrapper (which must
# fit itself). Returns what sticks out.
OVERFLOWING = """
() => {
  const name = (el) =>
    el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className ? "." + el.className.trim().replace(/\\s+/g, ".") : "");
  const problems = [];
  const page = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > page + 1) {
    problems.push("the page scrolls sideways: " + document.documentElement.scrollWidth + " > " + page);
  }
  for (const card of document.querySelectorAll(".card")) {
    const edge = card.getBoundingClientRect().right + 1;
    if (edge > page + 2) problems.push("card " + name(card) + " ends at " + edge + " beyond " + page);
    for (const el of card.querySelectorAll("*")) {
      const wrapper = el.parentElement && el.parentElement.closest(".table-scroll");
      if (wrapper && card.contains(wrapper)) continue;
      const box = el.getBoundingClientRect();
      if (box.width === 0 && box.height === 0) continue;
      if (box.right > edge) {
        const where = ": right " + Math.round(box.right) + " > " + Math.round(edge);
        problems.push(name(el) + " in " + name(card) + where);
      }
    }
  }
  return problems.slice(0, 20);
}
"""

# Words of headers and numeric cells laid out on more than one line (broken inside the word).
BROKEN_WORDS = """
() => {
  const broken = [];
  for (const cell of document.querySelectorAll(".card th, .card td.num")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const lines = [...range.getClientRects()].filter((r) => r.width > 0);
        const tops = new Set(lines.map((r) => Math.round(r.top)));
        if (tops.size > 1) broken.push(match[0] + " (in " + cell.tagName.toLowerCase() + ")");
      }
    }
  }
  return broken.slice(0, 20);
}
"""


def assert_fits(tab: Tab, path: str, name: str) -> None:
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.page.goto(tab.url(path))
        tab.page.wait_for_load_state("load")
        screenshot(tab, f"layout-{name}-{width}")
        assert tab.page.evaluate(OVERFLOWING) == [], f"{name} at {width} px"
        assert tab.page.evaluate(BROKEN_WORDS) == [], f"{name} at {width} px"
    assert tab.csp_violations() == []


def stressed_version(policy: Policy) -> PolicyVersion:
    text = "# Harassment\n\n## Criteria\n" + "\n".join(f"- {r}: what rule {r} forbids." for r in RULES)
    return policy_services.policy_version_create(policy=policy, text=text)


def stressed_run(version: PolicyVersion, *, shift: int) -> EvaluationRun:
    """A finished run of 40 items over every rule and category; ``shift`` changes some verdicts."""
    items = []
    for n in range(40):
        expected = "violates" if n % 2 else "safe"
        verdict = ["violates", "safe", "undetermined"][(n + shift) % 3] if n % 5 == 0 else expected
        items.append(
            evaluation_metrics.ItemResult(
                expected=expected,
                verdict=verdict,
                expected_rule_ids=[RULES[n % len(RULES)]] if expected == "violates" else [],
                rule_ids=[RULES[(n + shift) % len(RULES)]] if verdict == "violates" else [],
                hallucinated_rule_ids=["XX-99"] if n == 7 else [],
                category=CATEGORIES[n % len(CATEGORIES)],
                prompt_tokens=1843 + n,
                completion_tokens=212 + n,
                latency_ms=12_345 + n * 17,
            )
        )
    run = EvaluationRun.objects.create(
        policy=version.policy,
        policy_version=version,
        golden_set_hash=evaluations.golden_set_hash_now(version.policy),
        policy_text=version.text,
        policy_text_hash=version.content_hash,
        transport="completions",
        model="openai/gpt-oss-safeguard-20b",
        effort="medium",
        status=EvaluationRun.Status.FINISHED,
        total=len(items),
        done=len(items),
        finished_at=timezone.now(),
        metrics=evaluation_metrics.evaluation_metrics(items, policy_rule_ids=RULES),
    )
    EvaluationResult.objects.bulk_create(
        EvaluationResult(
            run=run,
            position=n,
            text=f"item {n}: {LONG_WORD} " + "a long post about a giveaway " * 12,
            text_hash=f"{n:064d}",
            expected_label=item.expected,
            expected_rule_ids=list(item.expected_rule_ids),
            category=item.category,
            status=EvaluationResult.Status.DONE,
            verdict=item.verdict,
            rule_ids=list(item.rule_ids),
            hallucinated_rule_ids=list(item.hallucinated_rule_ids),
            confidence="medium",
            rationale=f"The post {LONG_WORD} offers a prize for a fee, as rule {RULES[0]} describes.",
            chain_of_thought="Reasoning " * 80,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            latency_ms=item.latency_ms,
        )
        for n, item in enumerate(items[:12])
    )
    return run


@pytest.fixture
def editor(db: None) -> User:
    return user_with_role("pete", Role.POLICY_EDITOR, grants=[])


@pytest.fixture
def runs(policy: Policy) -> tuple[EvaluationRun, EvaluationRun]:
    version = stressed_version(policy)
    return stressed_run(version, shift=0), stressed_run(version, shift=1)


def test_the_run_page_fits_at_1024_and_1440_px(tab: Tab, editor: User, runs: Any) -> None:
    log_in(tab, editor)
    run = runs[0]
    assert_fits(tab, f"/runs/{run.pk}/", "run")
    page = tab.page
    # One number format: every rate with three decimals.
    expect(page.locator("table.metrics")).to_contain_text(f"{run.metrics['accuracy']:.3f}")
    expect(page.locator("table.per-rule tbody tr")).to_have_count(len(RULES))
    expect(page.locator("table.per-rule")).to_contain_text("1.000")
    expect(page.locator("table.confusion")).to_contain_text("Expected: violates")


def test_the_comparison_fits_at_1024_and_1440_px(tab: Tab, editor: User, runs: Any) -> None:
    log_in(tab, editor)
    before, after = runs
    assert_fits(tab, f"/runs/compare?a={before.pk}&b={after.pk}", "compare")
    deltas = tab.page.locator("table.deltas")
    expect(deltas).to_contain_text(f"{before.metrics['accuracy']:.3f}")
    expect(deltas.locator("td").first).to_have_text(f"{before.metrics['accuracy']:.3f}")
    # A perfect score reads as on the run page (1.000), never as a bare "1".
    assert not [t for t in deltas.locator("td").all_inner_texts() if t.strip() in ("1", "0")]


def test_the_golden_set_fits_at_1024_and_1440_px(tab: Tab, editor: User, policy: Policy) -> None:
    for n in range(30):
        golden_accepted(
            policy,
            f"example {n}: {LONG_WORD} and a longer text that goes on " * 3,
            "violates" if n % 2 else "safe",
            RULES[: n % 6],
        )
    log_in(tab, editor)
    assert_fits(tab, "/policies/spam/golden/", "golden")
    ids = tab.page.locator("#golden-table tbody td.num")
    assert ids.count() == 30 and any(len(t.strip()) >= 2 for t in ids.all_inner_texts())


def test_the_metrics_chart_has_axes_and_values_and_the_page_fits(
    tab: Tab, editor: User, policy: Policy, source: ApiClient
) -> None:
    now = timezone.now()
    moderator = user_with_role("mona", Role.MODERATOR, grants=[policy])
    for hours_ago, count in ((0, 3), (2, 7), (5, 12), (11, 1), (23, 4)):
        with mock.patch("django.utils.timezone.now", return_value=now - timedelta(hours=hours_ago)):
            made = [
                Decision.objects.create(
                    case=case,
                    moderator=moderator,
                    action=Decision.Action.CONFIRM,
                    final_label="violates",
                    model_verdict="violates",
                )
                for case in cases_create(policy, source.source, count, state=Case.State.DECIDED)
            ]
            rollups.decision_hours_add([d.pk for d in made])  # as the decide service does
    log_in(tab, editor)
    assert_fits(tab, "/metrics/", "metrics")
    chart = tab.page.locator("svg.chart")
    expect(chart.locator("rect")).to_have_count(24)
    expect(chart.locator("line.axis")).to_have_count(2)
    expect(chart.locator("text.value-label")).to_have_text(["12", "0"])
    hour_labels = chart.locator("text.hour-label")
    expect(hour_labels).to_have_count(8)
    assert all(t.endswith(":00") for t in hour_labels.all_text_contents())
    # The tallest bar is the 12 decisions of five hours ago and reaches the max label's line.
    tallest = chart.locator("rect").nth(23 - 5)
    expect(tallest.locator("title")).to_have_text(
        timezone.localtime(now - timedelta(hours=5)).strftime("%H:00") + ": 12"
    )
