"""The always-C test case: test answers per subject, and the hand count of its accuracies."""

from __future__ import annotations

# Test answers per subject (0-3 = A-D); a model that always answers C (2) scores the share of 2s.
ANSWERS = {
    "philosophy": [2, 2, 2, 0],  # humanities 3/4
    "nutrition": [2, 0, 1, 3],  # other 1/4
    "econometrics": [0, 1, 3, 0],  # social sciences 0/4
    "abstract_algebra": [2, 2, 1, 2],  # stem 3/4
}


def expected_acc(limit: int | None = None) -> dict[str, float]:
    """Hand count of the always-C model's accuracy per group (first ``limit`` questions)."""
    category = {
        "philosophy": "mmlu_humanities",
        "nutrition": "mmlu_other",
        "econometrics": "mmlu_social_sciences",
        "abstract_algebra": "mmlu_stem",
    }
    hits = {category[s]: [a == 2 for a in answers[:limit]] for s, answers in ANSWERS.items()}
    out = {group: sum(h) / len(h) for group, h in hits.items()}
    everything = [h for group in hits.values() for h in group]
    out["mmlu"] = sum(everything) / len(everything)
    return out
