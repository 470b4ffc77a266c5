"""The retrieval task's data and first stage: a BEIR-format collection and BM25 over it.

**Loading.** ``load_beir(source, split)`` reads corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv with
beir's ``GenericDataLoader``; ``source`` is a folder, or ``beir:NAME`` (e.g. ``beir:scifact``),
downloaded and unzipped once through beir's ``util.download_and_unzip`` into ``download_dir``.
A missing or corrupt folder is a one-line ``TaskDataError`` that names the fix.

**BM25: bm25s** (Lu, 2024), not rank_bm25: bm25s scores from a precomputed sparse (scipy) matrix
of per-term BM25 weights, so retrieving every query of a collection is one sparse product and a
top-k instead of rank_bm25's per-query Python loop over the whole corpus (orders of magnitude
faster on BEIR-sized corpora), it is maintained, and it implements Lucene's BM25 variant, the one
published BEIR and Pyserini BM25 numbers come from. Defaults are Anserini/Pyserini's: k1 = 0.9,
b = 0.4, Lucene's 33 English stop words, a Porter-family stemmer (Snowball English, PyStemmer).
Measured on Cranfield (all 225 queries): NDCG@10 0.343, MRR@10 0.506, Recall@100 0.722
(published: about 0.34). Other common settings give 0.316-0.365 (bm25s's own default k1 = 1.5,
b = 0.75 with stemming: 0.365; no stemming: 0.316-0.337); the defaults were not tuned on test.

The same ``Analyzer`` (lower case, words of 2+ word characters, stop words out, stems) feeds BM25
and the re-ranker's word vocabulary, so both stages see the same terms.
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.tasks.base import TaskDataError

BEIR_PREFIX = "beir:"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{}.zip"
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")        # bm25s's (and scikit-learn's) default
PAD, UNK, SEP = 0, 1, 2                             # the re-ranker's special word ids
SPECIALS = ("<pad>", "<unk>", "<sep>")


@dataclass
class Collection:
    """A BEIR collection: ids in file order, texts, and the qrels of one split."""

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]              # title + body, as the documents are ranked and re-ranked
    query_ids: list[str]          # only queries with judgements in the split
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def body(self, i: int) -> str:
        """Document ``i`` without its title (what a title pseudo-query is paired with)."""
        title, text = self.titles[i], self.texts[i]
        return text[len(title):].strip() if title and text.startswith(title) else text


def resolve_source(source: str, download_dir: str = "data/beir") -> Path:
    """The folder of ``source``: a path as given, or ``beir:NAME`` downloaded once (needs network)."""
    if not source.startswith(BEIR_PREFIX):
        return Path(source)
    name = source[len(BEIR_PREFIX):].strip()
    folder = Path(download_dir) / name
    if (folder / "corpus.jsonl").exists():
        return folder
    from beir import util

    try:
        return Path(util.download_and_unzip(BEIR_URL.format(name), download_dir))
    except Exception as exc:
        raise TaskDataError(f"downloading BEIR set {name!r} failed ({type(exc).__name__}: {exc}); check the name "
                            f"and the network, or download it yourself and set task.data_root to its folder") from None


def load_beir(folder: Path, split: str = "test") -> Collection:
    """Read a BEIR folder with beir's GenericDataLoader; TaskDataError names what is wrong."""
    from beir.datasets.data_loader import GenericDataLoader

    shape = f"a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/{split}.tsv"
    if not folder.is_dir():
        raise TaskDataError(f"{folder} is not a folder; set task.data_root to a BEIR folder ({shape}) or to "
                            f"'beir:NAME' to download one")
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / p).is_file()]
    if missing:
        raise TaskDataError(f"{folder} lacks {', '.join(missing)}: {shape}; fix task.data_root (or task.split)")
    for name, needed in (("corpus.jsonl", 1), (f"qrels/{split}.tsv", 2)):     # qrels: a header, then rows
        with open(folder / name, encoding="utf-8") as f:
            if sum(1 for _, line in zip(range(needed), f) if line.strip()) < needed:
                raise TaskDataError(f"{folder}: {name} is empty; re-download or repair the folder")
    try:
        with contextlib.redirect_stderr(io.StringIO()):          # beir's tqdm bar over the corpus
            corpus, queries, qrels = GenericDataLoader(str(folder)).load(split=split)
    except json.JSONDecodeError as exc:
        raise TaskDataError(f"{folder}: a .jsonl file is not valid JSON ({exc}); re-download or repair it") from None
    except KeyError as exc:
        raise TaskDataError(f"{folder}: qrels/{split}.tsv names query {exc} that queries.jsonl lacks; "
                            f"re-download or repair the folder") from None
    except (ValueError, IndexError) as exc:
        raise TaskDataError(f"{folder}: qrels/{split}.tsv is malformed ({exc}); it needs a header and "
                            f"query-id, corpus-id, integer score columns; repair it") from None
    doc_ids = list(corpus)
    titles = [corpus[d].get("title") or "" for d in doc_ids]
    bodies = [corpus[d].get("text") or "" for d in doc_ids]
    # BEIR joins title and text; a corpus whose text already starts with its title (Cranfield) keeps it once
    texts = [b if t and b.startswith(t) else f"{t} {b}".strip() for t, b in zip(titles, bodies)]
    qids = sorted(queries, key=lambda q: (len(q), q))            # numeric ids in numeric order
    return Collection(doc_ids, titles, texts, qids, [queries[q] or "" for q in qids], qrels)


class Analyzer:
    """Lower case, words of 2+ word characters, stop words out, Snowball stems (bm25s's tokenizer)."""

    def __init__(self, stemmer: str = "english", stopwords: str = "en"):
        from bm25s.stopwords import STOPWORDS_EN

        self.stop = set(STOPWORDS_EN) if stopwords == "en" else set()
        if stopwords not in ("en", ""):
            raise ValueError(f"stopwords must be 'en' or '', not {stopwords!r}")
        self.stemmer = None
        if stemmer:
            import Stemmer

            self.stemmer = Stemmer.Stemmer(stemmer)

    def __call__(self, text: str) -> list[str]:
        words = [w for w in TOKEN_PATTERN.findall(text.lower()) if w not in self.stop]
        return self.stemmer.stemWords(words) if self.stemmer else words


class BM25Index:
    """bm25s's Lucene BM25 over analysed documents; ``search`` returns doc indices, best first."""

    def __init__(self, docs: list[list[str]], k1: float = 0.9, b: float = 0.4):
        import bm25s

        self.n_docs = len(docs)
        self.bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.bm25.index(docs, show_progress=False)

    def search(self, queries: list[list[str]], k: int) -> np.ndarray:
        """(Q, min(k, n_docs)) document indices, best first (ties as bm25s orders them)."""
        k = min(k, self.n_docs)
        queries = [q or [""] for q in queries]                    # an empty query scores 0 everywhere
        docs, _ = self.bm25.retrieve(queries, k=k, show_progress=False, n_threads=1)
        return np.asarray(docs)


class WordTokenizer:
    """Analysed words -> ids: the ``size - 3`` most frequent words of the texts it is built from."""

    def __init__(self, analyzer: Analyzer, words: list[str]):
        self.analyzer, self.words = analyzer, [*SPECIALS, *words]
        self.ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, analyzer: Analyzer, texts: list[list[str]], size: int) -> "WordTokenizer":
        counts = Counter(w for text in texts for w in text)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[:size - len(SPECIALS)]
        return cls(analyzer, ranked)

    def encode_words(self, words: list[str]) -> list[int]:
        return [self.ids.get(w, UNK) for w in words]

    def encode(self, text: str) -> list[int]:
        return self.encode_words(self.analyzer(text))

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != PAD)


def split_queries(query_ids: list[str], train: float, val: float, seed: int) -> dict[str, list[str]]:
    """Disjoint train/val/test query ids: one seeded shuffle, cut by the fractions (test: the rest)."""
    order = list(query_ids)
    random.Random(seed).shuffle(order)
    n_train, n_val = int(round(train * len(order))), int(round(val * len(order)))
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def ranking_results(rankings: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """BEIR results from ranked doc-id lists: score = length - rank, so every metric sees exactly
    this order (no ties for pytrec_eval or beir's sorts to break differently)."""
    return {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in rankings.items()}


def first_stage_metrics(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]],
                        names: tuple[str, ...]) -> dict[str, float]:
    """Harness metrics ``names`` of the rankings of the queries in ``rankings``."""
    from harness.registry import metric

    results = ranking_results(rankings)
    return {name: float(metric(name).load()(results, qrels)) for name in names}


def describe(collection: Collection) -> dict[str, Any]:
    return {"documents": len(collection.doc_ids), "queries": len(collection.query_ids),
            "judgements": sum(len(v) for v in collection.qrels.values())}
