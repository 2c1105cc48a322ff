"""The report's steering section: the dose-response scored against the query's item category."""
from __future__ import annotations

from saerec import render
from saerec.stages import report as report_stage


def _level(strength: float, carrying: float, ndcg: float, category: float) -> dict[str, float]:
    return {"strength": strength, "carrying_share": carrying, "ndcg@20": ndcg, "hr@20": 0.2, "users_changed": 0.0,
            "category_share": category}


def _study(**extra) -> dict:
    test = [_level(0.0, 0.10, 0.080, 0.040), _level(0.5, 0.30, 0.0795, 0.050), _level(1.0, 0.60, 0.070, 0.090)]
    valid = [_level(0.0, 0.11, 0.090, 0.045), _level(0.5, 0.31, 0.0895, 0.055), _level(1.0, 0.61, 0.080, 0.095)]
    return {"query": "sunscreen", "model": "grounded-seed0", "boosted_intents": 1, "items_carrying": 30,
            "matched_summaries": ["sunscreen spf"], "top_n": 20, "dose_response": test, "valid_dose_response": valid,
            "within_1pct_cost": {"strength": 0.5, "test_ndcg@20_cost": 0.00625, "carrying_share_rise": 2.0,
                                 "category_share_before": 0.04, "category_share_after": 0.05,
                                 "category_share_rise": 0.25}, **extra}


def _markdown(study: dict) -> str:
    doc = render.Document("r")
    report_stage._dose_response(doc.section("Steering study"), study)
    return render.to_markdown(doc)


def test_the_steering_section_shows_the_category_share_at_the_chosen_strength_and_its_dose_response():
    markdown = _markdown(_study(category="Sun", category_items=40))
    assert ("Against the outside label 'Sun' (40 items): at strength 0.5 the share of test top-20 items in it goes "
            "from 4.00% to 5.00% (+25.0% relative") in markdown
    assert "the share of top-20 items labelled 'Sun', valid and test users" in markdown
    assert markdown.count("data:image/png;base64,") == 2, "the category curve beside the carrying/NDCG curve"


def test_a_study_without_a_category_says_why_and_draws_no_category_curve():
    markdown = _markdown(_study(category_skipped="no category names match 'sunscreen'; set evaluate.steering_category"))
    assert ("Not scored against item categories: no category names match 'sunscreen'; set "
            "evaluate.steering_category.") in markdown
    assert markdown.count("data:image/png;base64,") == 1
