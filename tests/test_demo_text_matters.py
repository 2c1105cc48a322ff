"""On a sparse demo (many items, the planted intents driving choices) the text must reach the items:
at the same small training budget, the grounded model, whose items are built from their texts'
SAE codes, is far ahead of SASRec, which has to learn every item's intent from its ID.

The whole chain runs for real (the demo generator, MiniLM, the SAE on Ray Train, the profile
stage on Ray Data, train_rec on Ray Train, evaluate), with the item descriptions as the only
text (one text per item, so embedding takes seconds) and a judge cut to a few latents
(``grounded-all`` reads every latent, not the judged ones). Seeded; the margin is on test
metrics after a fixed number of epochs, never on time.

The demo labels every item with its planted intents, so the profile stage scores category
purity too: the kept intents' top-20 items must be far purer than random item sets.

Measured on this setting (2 CPU cores, seed 0): after 8 epochs valid NDCG@20 is 0.036 for SASRec
and 0.135 for grounded-all. Trained to convergence SASRec catches up and passes it (best valid
NDCG@20 0.149 against 0.138), which is why this test fixes the budget: it checks that the text's
intent evidence reaches the items, not that the grounded model wins at convergence.
"""
from __future__ import annotations

from saerec import artifacts
from saerec.config import load_config
from saerec.pipeline import Runner, StageInput
from saerec.stages import embed, evaluate, explain, judge, prepare, profile, train_rec, train_sae
from saerec.storage import Store

SPARSE_DEMO = ["data.demo.users=1500", "data.demo.items=2000", "data.text=items", "data.demo.new_items=0.1"]
EPOCHS = 8
MARGIN = 1.5  # grounded-all's test NDCG@20 and HR@20 at least this many times SASRec's
TAIL_MARGIN = 0.02  # on users whose test item is in the tail, the paired interval's low end (test NDCG@20)
PURITY_MARGIN = 2.0  # kept intents' top-20 items at least this many times purer than random item sets


def test_text_reaches_the_items_grounded_learns_intents_sasrec_must_learn_per_item(tmp_path, ray_local):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'out'}", *SPARSE_DEMO, "sae.epochs=10", "judge.max_latents=4",
                             "judge.max_new_tokens=6", "judge.null_lists=16",
                             'judge.keep=["Yes", "Probably", "Maybe", "No"]', "rec.models=[sasrec, grounded-all]",
                             f"rec.max_epochs={EPOCHS}", f"rec.patience={EPOCHS}", "evaluate.steering_query=null"])
    store = Store(cfg.storage.uri)
    runner = Runner(cfg, store)
    for stage in (prepare, embed, train_sae, explain, judge, profile, train_rec, evaluate):
        runner.run_stage(stage.STAGE)
    profiled = runner.manifest("profile")["metrics"]
    assert profiled["purity_kept_sets"] >= 1 and profiled["purity_chance_sets"] == 100
    assert profiled["purity_kept"] >= PURITY_MARGIN * profiled["purity_chance"], \
        f"kept intents' category purity {profiled['purity_kept']} vs random item sets {profiled['purity_chance']}"
    metrics = runner.manifest("evaluate")["metrics"]
    for metric in ("ndcg@20", "hr@20"):
        sasrec, grounded = metrics[f"sasrec_test_{metric}"], metrics[f"grounded-all_test_{metric}"]
        assert grounded >= sasrec * MARGIN, f"{metric}: grounded-all {grounded:.4f} vs SASRec {sasrec:.4f}"
    # Rare items and new arrivals (data.demo.new_items: no training interaction, so an ID cannot be
    # learned, while their description's intents can): the paired intervals over those users lie above 0.
    # Measured here: tail +0.046 [+0.038, +0.054], cold (58 users) +0.024 [+0.005, +0.049], SASRec's cold 0.
    tested = artifacts.read_json(StageInput(store, runner.manifest("evaluate")), artifacts.TEST_METRICS)
    popularity = tested["by_popularity"]
    assert popularity["buckets"]["cold"]["test_users"] >= 40, popularity["buckets"]
    paired = next(c for c in popularity["comparisons"] if (c["a"], c["b"]) == ("grounded-all", "sasrec"))
    assert paired["buckets"]["tail"]["low"] > TAIL_MARGIN, paired["buckets"]["tail"]
    assert paired["buckets"]["cold"]["low"] > 0, paired["buckets"]["cold"]
