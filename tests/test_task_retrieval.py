"""The retrieval task: BEIR loading and its errors, BM25, the query split, the word tokenizer, pair
packing, and a tiny end-to-end loss / evaluate / runner pass. Cranfield checks skip without ../shared."""
import json
import os

import pytest
import torch

from harness.nn.encoder import build_encoder
from harness.plan import build_task, plan_suite
from harness.execute import execute_run
from harness.suite import load_suite
from harness.tasks import bm25_stage as fs
from harness.tasks.base import TaskDataError
from harness.tasks.retrieval import RERANK_METRICS, Retrieval, pack, split_queries

ROOT = os.getcwd()
CRANFIELD = os.path.join(ROOT, "..", "shared", "data", "beir", "cranfield")
TOPICS = ["boundary layer transition on a flat plate", "shock wave interaction with a wedge",
          "heat transfer in hypersonic flow", "flutter of swept aircraft wings", "buckling of thin cylindrical shells",
          "propeller slipstream effect on lift", "laminar jet mixing with the ambient air",
          "panel vibration from acoustic noise", "rocket nozzle expansion and thrust", "ablation of reentry heat shields",
          "compressor blade stall at low speed", "viscous drag of slender bodies of revolution"]


def make_beir(folder, n_queries=6):
    """A tiny BEIR folder: 12 documents on distinct topics, query i asks about topic i."""
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i, topic in enumerate(TOPICS):
            body = f"we study {topic} with experiments and theory; results for {topic} agree well."
            text = f"{topic} . {body}" if i % 2 else body      # odd docs repeat the title, as Cranfield does
            f.write(json.dumps({"_id": f"d{i}", "title": f"{topic} .", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": f"what is known about {TOPICS[i]}"}) + "\n")
    rows = [f"q{i}\td{i}\t2" for i in range(n_queries)] + [f"q{i}\td{(i + 1) % 12}\t1" for i in range(n_queries)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture
def beir_dir(tmp_path):
    return make_beir(tmp_path / "tiny")


def tiny_task(folder, **options):
    defaults = dict(data_root=str(folder), rerank_k=6, first_stage_k=10, vocab_size=64, query_len=8, max_len=32,
                    group_size=4, neg_depth=5, train_queries=0.34, val_queries=0.33)
    return Retrieval(**{**defaults, **options})


# ---- loading -----------------------------------------------------------------------------------
def test_loads_a_beir_folder(beir_dir):
    c = fs.load_beir(beir_dir)
    assert len(c.doc_ids) == 12 and c.query_ids == [f"q{i}" for i in range(6)]
    assert c.qrels["q0"] == {"d0": 2, "d1": 1}
    assert c.texts[1].startswith(f"{TOPICS[1]} . we study")    # the title already leads the text: kept once
    assert c.texts[0].startswith(f"{TOPICS[0]} . we study")    # the title joined in front, as BEIR does
    assert c.body(1).startswith("we study") and c.body(0).startswith("we study")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "qrels" / "test.tsv").unlink(), "lacks qrels/test.tsv"),
    (lambda d: (d / "corpus.jsonl").write_text('{"_id": "d0", "title": \n'), "not valid JSON"),
    (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\thigh\n"), "malformed"),
    (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq99\td0\t1\n"), "names query"),
    (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"), "is empty"),
])
def test_a_broken_folder_is_one_line_naming_the_fix(beir_dir, damage, message):
    damage(beir_dir)
    with pytest.raises(TaskDataError, match=message) as err:
        Retrieval(data_root=str(beir_dir)).check_data()
    assert "\n" not in str(err.value) and ("task." in str(err.value) or "repair" in str(err.value))


def test_a_missing_folder_says_what_to_set(tmp_path):
    with pytest.raises(TaskDataError, match="task.data_root"):
        Retrieval(data_root=str(tmp_path / "nowhere")).check_data()


def test_beir_name_uses_a_downloaded_folder_without_network(tmp_path):
    make_beir(tmp_path / "dl" / "tiny")
    assert fs.resolve_source("beir:tiny", str(tmp_path / "dl")) == tmp_path / "dl" / "tiny"


# ---- first stage -------------------------------------------------------------------------------
def test_bm25_ranks_the_matching_document_first(beir_dir):
    c = fs.load_beir(beir_dir)
    analyze = fs.Analyzer()
    index = fs.BM25Index([analyze(t) for t in c.texts])
    hits = index.search([analyze(q) for q in c.queries], k=5)
    assert hits.shape == (6, 5)
    assert [c.doc_ids[row[0]] for row in hits] == [f"d{i}" for i in range(6)]
    assert all(len(set(row)) == 5 for row in hits.tolist())
    assert index.search([analyze("flutter")], k=50).shape == (1, 12)            # k capped at the corpus
    assert analyze("The Boundary-Layers of plates") == ["boundari", "layer", "plate"]   # stop words out, stems


@pytest.mark.skipif(not os.path.isdir(CRANFIELD), reason="../shared/data/beir/cranfield not present")
def test_cranfield_bm25_is_near_the_published_ndcg():
    c = fs.load_beir(fs.resolve_source(CRANFIELD))
    assert (len(c.doc_ids), len(c.query_ids), sum(map(len, c.qrels.values()))) == (1400, 225, 1612)
    analyze = fs.Analyzer()
    hits = fs.BM25Index([analyze(t) for t in c.texts]).search([analyze(q) for q in c.queries], 100)
    rankings = {q: [c.doc_ids[j] for j in row] for q, row in zip(c.query_ids, hits)}
    got = fs.first_stage_metrics(rankings, c.qrels, ("ndcg_at_10", "recall_at_100"))
    assert got["ndcg_at_10"] == pytest.approx(0.34, abs=0.03)       # measured 0.343
    assert got["recall_at_100"] == pytest.approx(0.722, abs=0.01)


# ---- query split, tokenizer, packing -----------------------------------------------------------
def test_query_split_is_disjoint_complete_and_seeded():
    ids = [str(i) for i in range(225)]
    parts = split_queries(ids, 0.4, 0.1, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [90, 22, 113]
    assert sorted(sum(parts.values(), []), key=int) == ids
    assert split_queries(ids, 0.4, 0.1, seed=0) == parts and split_queries(ids, 0.4, 0.1, seed=1) != parts


def test_training_never_sees_a_val_or_test_query(beir_dir):
    task = tiny_task(beir_dir)
    data, splits, n_real = task._data, task.query_splits, len(task.collection.query_ids)
    held_out = {task.collection.query_ids.index(q) for s in ("val", "test") for q in splits[s]}
    real_rows = {int(r) for r in data["ex_query"] if r < n_real}           # rows past n_real: title pseudo-queries
    assert real_rows and not real_rows & held_out
    assert real_rows == {task.collection.query_ids.index(q) for q in splits["train"]}
    assert data["n_pseudo"] == 12 and data["n_query_pairs"] == 2 * len(splits["train"])
    for s in ("val", "test"):                                              # evaluation pairs: that split's queries only
        assert {task.collection.query_ids[int(i)] for i in data[s][3]} == set(splits[s])


def test_tokenizer_round_trip(beir_dir):
    task = tiny_task(beir_dir, vocab_size=4096)
    tok, text = task.tokenizer, "Shock waves interacting with the wedge of a rocket nozzle"
    assert tok.decode(tok.encode(text)) == " ".join(fs.Analyzer()(text)) == "shock wave interact wedg rocket nozzl"
    assert tok.words[:3] == ["<pad>", "<unk>", "<sep>"]
    assert tok.decode(tok.encode("zeppelin shock")) == "<unk> shock"
    small = tiny_task(beir_dir, vocab_size=8).tokenizer
    assert len(small.words) == 8 and max(small.encode(text)) < 8


def test_pack_lays_out_query_sep_document():
    q, q_len = torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([2, 1])
    d, d_len = torch.tensor([[8, 9, 10, 11], [12, 0, 0, 0]]), torch.tensor([4, 1])
    tokens, pad, segments = pack(q, q_len, d, d_len, max_len=6)
    assert tokens.tolist() == [[5, 6, 2, 8, 9, 10], [7, 2, 12, 0, 0, 0]]          # the long document is cut
    assert pad.tolist() == [[True] * 6, [True, True, True, False, False, False]]
    assert segments.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]]


# ---- end to end --------------------------------------------------------------------------------
def tiny_model(task):
    torch.manual_seed(0)
    return build_encoder(task.meta, mixer="softmax", dim=16, depth=1, heads=2, mlp_ratio=2.0)


def test_loss_and_evaluate_on_a_few_queries(beir_dir):
    torch.set_num_threads(1)
    task = tiny_task(beir_dir)
    model = tiny_model(task)
    batch = next(iter(task.batches("train", 3, seed=0)))
    assert batch[0].shape == (3 * 4, 32)                                   # 3 groups of 1 positive + 3 negatives
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.tok_embed.weight.grad.abs().sum() > 0
    model.eval()
    out = task.evaluate(model, task.batches("test", 2), torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert set(out) == {*RERANK_METRICS, *(f"bm25_{m}" for m in (*RERANK_METRICS, "recall_at_100"))}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert out["bm25_ndcg_at_10"] == pytest.approx(1.0, abs=0.2)          # the tiny queries are easy for BM25


def test_per_example_loss_gives_each_pair_its_groups_listwise_loss(beir_dir):
    torch.set_num_threads(1)
    task = tiny_task(beir_dir)
    model = tiny_model(task)
    batch = next(iter(task.batches("train", 3, seed=0)))
    per_pair = task.per_example_loss(model, batch)                        # (3 * 4,)
    assert per_pair.shape == (12,)
    with torch.no_grad():
        scores = model(*batch[:3]).view(3, 4)
    by_hand = -torch.log_softmax(scores, 1)[:, 0]                           # the positive is first in its group
    assert torch.allclose(per_pair.view(3, 4), by_hand[:, None].expand(3, 4), atol=1e-5)
    assert len(set(by_hand.tolist())) == 3                                  # groups differ, pairs of one group agree
    assert task.loss(model, batch).item() == pytest.approx(by_hand.mean().item(), abs=1e-5)


class Constant(torch.nn.Module):
    def forward(self, tokens, pad=None, segments=None):
        return torch.zeros(len(tokens), 1)


def test_tied_scores_keep_bm25_order_and_rerank_k_0_is_bm25(beir_dir):
    nocast = lambda: torch.autocast("cpu", enabled=False)                  # noqa: E731
    for task in (tiny_task(beir_dir), tiny_task(beir_dir, rerank_k=0)):
        out = task.evaluate(Constant(), task.batches("test", 4), torch.device("cpu"), nocast)
        assert all(out[m] == out[f"bm25_{m}"] for m in RERANK_METRICS)


class NoHook:
    def metrics_logged(self, **_):
        pass


def test_a_few_runner_steps_and_the_first_stage_artifact(beir_dir, tmp_path):
    # the suite as `harness run` plans it (validation, budget, contract gate), then one run without the reporter
    suite = load_suite(f"{ROOT}/suites/retrieval.toml", [
        f"task.data_root={json.dumps(str(beir_dir))}", "task.vocab_size=64", "task.max_len=32", "task.query_len=8",
        "task.rerank_k=6", "task.group_size=4", "task.neg_depth=5", "task.train_queries=0.34",
        "task.val_queries=0.33", "train.steps=2", "train.batch_size=2", "train.eval_every=1", "train.log_every=1",
        "suite.seeds=[0]", "budget.params=6000", "model.dim=16", "model.depth=1"])
    plans = plan_suite(suite, contract=True)
    run = suite.runs(["softmax"])[0]
    result = execute_run(run, plans["softmax"], build_task(suite), NoHook(), tmp_path)
    assert result.status == "finished"
    assert {"test/ndcg_at_10", "test/bm25_ndcg_at_10", "test/bm25_recall_at_100"} <= set(result.metrics)
    assert result.efficiency["flops_per_token"] > 0
    report = json.loads(open(result.artifacts["samples/first_stage.json"]).read())
    assert report["queries"] == {"train": 2, "val": 2, "test": 2} and report["bm25"]["all_queries"]["ndcg_at_10"] > 0.5
