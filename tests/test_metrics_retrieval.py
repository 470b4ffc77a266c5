"""Retrieval metrics (beir's EvaluateRetrieval behind harness names) against a hand-computed example."""
import math

import pytest

from harness.metrics import hit_at_1, map_at_100, mrr_at_10, ndcg_at_10, recall_at_100
from harness.registry import metric

QRELS = {
    "q1": {"d1": 2, "d3": 1},          # graded: d1 more relevant than d3
    "q2": {"d4": 1},                   # its one relevant document is never retrieved
    "q3": {"d7": 1, "d8": 1},
}
RESULTS = {
    "q1": {"d2": 3.0, "d1": 2.0, "d3": 1.0},       # ranking d2 (not relevant), d1 (2), d3 (1)
    "q2": {"d5": 2.0, "d6": 1.0},                  # nothing relevant
    "q3": {"d7": 2.0, "d9": 1.0},                  # d7 relevant at rank 1; d8 not retrieved
}

# NDCG@10, trec_eval's ndcg_cut: gain = grade, discount 1 / log2(rank + 1).
#   q1: DCG = 0 + 2/log2(3) + 1/log2(4) = 1.26186 + 0.5 = 1.76186; ideal = 2/1 + 1/log2(3) = 2.63093 -> 0.66967
#   q2: 0
#   q3: DCG = 1/1 = 1; ideal (two relevant) = 1 + 1/log2(3) = 1.63093 -> 0.61315
#   mean = (0.66967 + 0 + 0.61315) / 3 = 0.42761
Q1_NDCG = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
Q3_NDCG = 1 / (1 + 1 / math.log2(3))
NDCG_10 = (Q1_NDCG + 0 + Q3_NDCG) / 3
# MRR@10: first relevant at rank 2, none, rank 1 -> (1/2 + 0 + 1) / 3 = 0.5
MRR_10 = (1 / 2 + 0 + 1) / 3
# Hit@1: only q3's first result is relevant -> 1/3
HIT_1 = 1 / 3
# Recall@100: q1 2 of 2, q2 0 of 1, q3 1 of 2 -> (1 + 0 + 0.5) / 3 = 0.5
RECALL_100 = (1 + 0 + 0.5) / 3
# MAP@100: AP = sum of precision at each relevant hit / number of relevant documents
#   q1: (1/2 + 2/3) / 2 = 0.58333; q2: 0; q3: (1/1) / 2 = 0.5 -> (0.58333 + 0 + 0.5) / 3 = 0.36111
MAP_100 = ((1 / 2 + 2 / 3) / 2 + 0 + 1 / 2) / 3


@pytest.mark.parametrize("fn, expected", [(ndcg_at_10, NDCG_10), (mrr_at_10, MRR_10), (hit_at_1, HIT_1),
                                          (recall_at_100, RECALL_100), (map_at_100, MAP_100)])
def test_hand_computed_example(fn, expected):
    assert NDCG_10 == pytest.approx(0.42761, abs=1e-5) and MAP_100 == pytest.approx(0.36111, abs=1e-5)
    assert fn(RESULTS, QRELS) == pytest.approx(expected, abs=1e-5)      # beir rounds to 5 decimals


def test_identical_query_and_document_ids_are_kept():
    # Cranfield numbers queries and documents from 1: beir's default would drop doc "1" from query "1"
    qrels, results = {"1": {"1": 1}}, {"1": {"1": 2.0, "2": 1.0}}
    assert ndcg_at_10(results, qrels) == 1.0 and hit_at_1(results, qrels) == 1.0
    assert results == {"1": {"1": 2.0, "2": 1.0}}                       # the caller's dict is not changed


def test_averages_over_the_queries_both_hold():
    # a query without judgements is not counted (pytrec_eval's rule, applied to MRR and Hit@1 too)
    results = {**RESULTS, "unjudged": {"d1": 1.0}}
    assert mrr_at_10(results, QRELS) == pytest.approx(MRR_10, abs=1e-5)
    assert hit_at_1(results, QRELS) == pytest.approx(HIT_1, abs=1e-5)
    with pytest.raises(ValueError, match="no query"):
        ndcg_at_10({"x": {"d1": 1.0}}, QRELS)


def test_registered_higher_is_better_with_mlflow_safe_names():
    for name in ("ndcg_at_10", "mrr_at_10", "recall_at_100", "hit_at_1", "map_at_100"):
        spec = metric(name)
        assert spec.higher_is_better and name.replace("_", "").isalnum()
        assert spec.load()(RESULTS, QRELS) >= 0.0
