"""Built-in metrics: ``fn(outputs, targets) -> float`` over a whole evaluation split."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the label."""
    return (logits.argmax(-1) == labels).float().mean().item()


def loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy in nats."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()


def perplexity(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return math.exp(loss(logits, labels))


def bpc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Bits per character: cross-entropy in bits."""
    return loss(logits, labels) / math.log(2)


def wer(hypotheses: list[str], references: list[str]) -> float:
    """Word error rate over a whole split (jiwer: total edits / total reference words)."""
    import jiwer

    return float(jiwer.wer(list(references), list(hypotheses)))


def cer(hypotheses: list[str], references: list[str]) -> float:
    """Character error rate over a whole split (jiwer: total edits / total reference characters)."""
    import jiwer

    return float(jiwer.cer(list(references), list(hypotheses)))


# Retrieval metrics: ``fn(results, qrels) -> float`` with BEIR's dictionaries, results
# {query_id: {doc_id: score}} (higher score = ranked earlier) and qrels {query_id: {doc_id: grade}}
# (grade > 0 = relevant), computed by beir's EvaluateRetrieval (pytrec_eval for NDCG, MAP and
# recall; beir's own MRR and top-k accuracy) and averaged over the queries both dictionaries hold.
# Query and document ids may coincide (Cranfield numbers both from 1): nothing is dropped for that
# (beir's default ``ignore_identical_ids=True`` would silently remove such hits).

def _shared_queries(results: dict, qrels: dict) -> tuple[dict, dict]:
    """The results and qrels of the queries both hold (what pytrec_eval averages over; beir's MRR
    and accuracy divide by len(qrels), so both are cut to the same queries)."""
    shared = [q for q in results if q in qrels]
    if not shared:
        raise ValueError("no query has both results and relevance judgements")
    return {q: dict(results[q]) for q in shared}, {q: qrels[q] for q in shared}


def _trec(results: dict, qrels: dict, k: int, key: str) -> float:
    from beir.retrieval.evaluation import EvaluateRetrieval

    res, rel = _shared_queries(results, qrels)
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(rel, res, [k], ignore_identical_ids=False)
    return float({**ndcg, **_map, **recall}[key])


def _custom(results: dict, qrels: dict, k: int, metric: str, key: str) -> float:
    from beir.retrieval.evaluation import EvaluateRetrieval

    res, rel = _shared_queries(results, qrels)
    return float(EvaluateRetrieval.evaluate_custom(rel, res, [k], metric=metric)[key])


def ndcg_at_10(results: dict, qrels: dict) -> float:
    """NDCG@10, graded gains (trec_eval's ndcg_cut: gain = grade, log2 discount)."""
    return _trec(results, qrels, 10, "NDCG@10")


def map_at_100(results: dict, qrels: dict) -> float:
    """Mean average precision over the first 100 results (trec_eval's map_cut)."""
    return _trec(results, qrels, 100, "MAP@100")


def recall_at_100(results: dict, qrels: dict) -> float:
    """Share of a query's relevant documents found in its first 100 results, averaged."""
    return _trec(results, qrels, 100, "Recall@100")


def mrr_at_10(results: dict, qrels: dict) -> float:
    """Mean reciprocal rank of the first relevant document within the first 10 (0 when none)."""
    return _custom(results, qrels, 10, "mrr", "MRR@10")


def hit_at_1(results: dict, qrels: dict) -> float:
    """Share of queries whose first result is relevant (beir's top_k_accuracy at k = 1)."""
    return _custom(results, qrels, 1, "top_k_accuracy", "Accuracy@1")
