"""The core's built-in tasks."""
from harness import TaskSpec, hookimpl


@hookimpl
def register_tasks(register):
    register(TaskSpec("digits", "harness.tasks.vision:Digits", metrics=("accuracy", "loss"),
                      description="scikit-learn's bundled 8x8 digits (1,797 images), fixed split, no download"))
    register(TaskSpec("cifar10", "harness.tasks.vision:cifar10", metrics=("accuracy", "loss"),
                      description="CIFAR-10 from data_root (torchvision pickle format); download = true to fetch"))
    register(TaskSpec("cifar100", "harness.tasks.vision:cifar100", metrics=("accuracy", "loss"),
                      description="CIFAR-100 from data_root (torchvision pickle format); download = true to fetch"))
    register(TaskSpec("asr", "harness.tasks.audio:SpeechRecognition", metrics=("wer", "cer", "loss"), causal=True,
                      needs_padding=True, throughput="audio_seconds",
                      description="character ASR on WAVs + transcripts.tsv (FSDD layout): multi-word utterances, "
                      "held-out speaker"))
    register(TaskSpec("mqar", "harness.tasks.mqar:MQAR", metrics=("accuracy", "loss"), causal=True,
                      description="synthetic multi-query associative recall (Zoology), seeded; lm backbone"))
    register(TaskSpec("listops", "harness.tasks.listops:ListOps", metrics=("accuracy", "loss"), needs_padding=True,
                      description="synthetic ListOps (Long Range Arena generator), seeded, padded; encoder backbone"))
    register(TaskSpec("charlm", "harness.tasks.text:CharLM", metrics=("loss", "bpc", "perplexity"), causal=True,
                      throughput="tokens", description="character-level LM on a text file (corpus), contiguous "
                      "90/5/5 split; download = true fetches tinyshakespeare"))
    register(TaskSpec("retrieval", "harness.tasks.retrieval:Retrieval",
                      metrics=("ndcg_at_10", "mrr_at_10", "hit_at_1", "map_at_100"), needs_padding=True,
                      description="BEIR-format re-ranking (default Cranfield): BM25 (bm25s) top-k, then a "
                      "cross-encoder on the encoder backbone (token_pairs); BEIR metrics"))
