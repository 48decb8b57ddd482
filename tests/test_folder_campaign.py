"""The model-folder campaign (tests/folder_campaign.py) against transformers: config fields, tensor
shapes, tokenizer and config files, index entries. Skipped without the torch oracle
(ops/oracle-torch.sh), except under CI=true, where a missing oracle fails."""

from __future__ import annotations

import os

import pytest

from tests import folder_campaign


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> list[folder_campaign.Mutant]:
    ms = folder_campaign.run(tmp_path_factory.mktemp("folders"))
    if ms is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the transformers/torch oracle is not installed (run ops/oracle-torch.sh)")
        pytest.skip("the transformers/torch oracle is not installed (ops/oracle-torch.sh)")
    return ms


def test_every_mutant_agrees_with_transformers(mutants) -> None:
    bad = folder_campaign.disagreements(mutants)
    assert not bad, "\n".join(f"{m.family} {m.kind}: {m.detail}" for m in bad[:20])


def test_the_campaign_covers_every_family_good_and_bad(mutants) -> None:
    for family in folder_campaign.FAMILIES:
        mine = [m for m in mutants if m.family == family]
        assert any(m.theirs and m.ours for m in mine), family  # good variants pass both
        assert sum(not m.theirs and not m.ours for m in mine) >= 10, family  # refusals caught
    assert all(m.ours and m.theirs for m in mutants if m.kind == "original")


def test_every_deliberate_difference_is_exercised_and_still_differs(mutants) -> None:
    seen = {m.label for m in mutants if m.ours != m.theirs}
    assert set(folder_campaign.DELIBERATE) <= seen
