"""The core's built-in metrics."""
from harness import MetricSpec, hookimpl


@hookimpl
def register_metrics(register):
    register(MetricSpec("accuracy", "harness.metrics:accuracy", higher_is_better=True,
                        description="fraction of correct arg-max predictions"))
    register(MetricSpec("loss", "harness.metrics:loss", higher_is_better=False, description="mean cross-entropy (nats)"))
    register(MetricSpec("perplexity", "harness.metrics:perplexity", higher_is_better=False,
                        description="exp(cross-entropy)"))
    register(MetricSpec("bpc", "harness.metrics:bpc", higher_is_better=False, description="bits per character"))
    register(MetricSpec("wer", "harness.metrics:wer", higher_is_better=False,
                        description="word error rate of transcripts (jiwer), lists of strings"))
    register(MetricSpec("cer", "harness.metrics:cer", higher_is_better=False,
                        description="character error rate of transcripts (jiwer), lists of strings"))
    for name, what in (("ndcg_at_10", "NDCG@10 (graded gains)"), ("mrr_at_10", "MRR@10"),
                       ("recall_at_100", "Recall@100"), ("hit_at_1", "Hit@1 (beir's top_k_accuracy)"),
                       ("map_at_100", "MAP@100")):
        register(MetricSpec(name, f"harness.metrics:{name}", higher_is_better=True,
                            description=f"retrieval {what} via beir's EvaluateRetrieval; results and qrels dicts"))
