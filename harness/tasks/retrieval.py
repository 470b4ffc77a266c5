"""Re-ranking a BEIR collection: BM25 first stage, a cross-encoder on the ``encoder`` backbone second.

**Data.** Any BEIR-format folder (``data_root``; ``beir:NAME`` downloads one), judgements of
``split`` (default test); see ``harness.tasks.bm25_stage`` for loading and BM25 (bm25s, Lucene's
variant, Pyserini's defaults; Cranfield NDCG@10 0.343 over all queries).

**Protocol** (for a collection with test judgements only, such as Cranfield):

- The judged queries are split once, by the data ``seed`` (a task option, not the run seed):
  ``train_queries`` (default 40%) train, ``val_queries`` (10%) validation, the rest (50%) test.
  Test metrics come only from test queries, which nothing trains on (nor builds the vocabulary).
- Training groups pair a query with one relevant document and ``group_size - 1`` hard negatives
  drawn afresh each step from its BM25 top ``neg_depth``: (a) every document title as a
  pseudo-query for its own text with the title cut off (otherwise the answer is a verbatim copy),
  negatives the bodies of other documents BM25 ranks high for that title (documents with the same
  title excluded); (b) each training query with each document judged relevant (grade > 0),
  negatives from its BM25 candidates not judged relevant. Loss: softmax cross-entropy over the
  group's scores, the positive the target (listwise, "localized contrastive estimation").
- Evaluation re-ranks the BM25 top ``rerank_k`` (default 25) of each validation or test query by
  the model's score (ties keep BM25's order); ranks ``rerank_k + 1 ..  first_stage_k`` keep BM25's
  order, so MAP@100 counts them. Metrics: ``ndcg_at_10``, ``mrr_at_10``, ``hit_at_1``,
  ``map_at_100`` of the re-ranked lists and ``bm25_*`` of BM25 alone on the same queries, with
  ``bm25_recall_at_100`` (re-ranking inside the top 100 cannot change Recall@100).
  ``rerank_k = 0`` is BM25 alone: the re-ranked metrics then equal the bm25 ones.

**Inputs.** One word vocabulary of ``vocab_size`` ids (0 pad, 1 unknown, 2 separator, then the
corpus's analysed words by frequency; fixed size, so parameter counts do not depend on the data;
nothing is downloaded), built from the documents only. A pair is ``query [SEP] document``, query
cut to ``query_len`` words, the whole cut to ``max_len`` and right-padded; segments are 0 for the
query and separator, 1 for the document; the encoder prepends its CLS token and its head gives one
relevance score. Each batch is cut to its longest pair. ``batch_size`` counts training groups:
a step sees ``batch_size * group_size`` pairs, and throughput counts pairs.
"""
from __future__ import annotations

import json
import random
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.nn import functional as F

from harness.data_files import record
from harness.specs import TaskMeta
from harness.tasks import bm25_stage as fs
from harness.tasks.bm25_stage import WordTokenizer, split_queries

PAD, SEP = fs.PAD, fs.SEP
RERANK_METRICS = ("ndcg_at_10", "mrr_at_10", "hit_at_1", "map_at_100")
BM25_METRICS = (*RERANK_METRICS, "recall_at_100")
FIRST_STAGE_FILE = "first_stage.json"


def padded(rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows cut to ``width`` and right-padded: ids (N, width), lengths (N,)."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    lengths = torch.tensor([min(len(r), width) for r in rows], dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :lengths[i]] = torch.tensor(r[:width], dtype=torch.long)
    return ids, lengths


def pack(q: torch.Tensor, q_len: torch.Tensor, d: torch.Tensor, d_len: torch.Tensor, max_len: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``query [SEP] doc`` rows, right-padded to ``max_len``: tokens, pad (True = real), segments.

    q (N, Lq) with lengths q_len (N,); d (N, Ld) with d_len (N,). Vectorised: position p reads
    the query below q_len, SEP at q_len, then the document, cut to fit."""
    pos = torch.arange(max_len)[None, :]                                    # (1, T)
    ql, dl = q_len[:, None], torch.minimum(d_len, max_len - 1 - q_len)[:, None]   # (N, 1)
    from_q = q.gather(1, pos.clamp(max=q.shape[1] - 1).expand(len(q), -1))  # (N, T)
    from_d = d.gather(1, (pos - ql - 1).clamp(0, d.shape[1] - 1))           # (N, T)
    in_doc = (pos > ql) & (pos <= ql + dl)
    tokens = torch.where(pos < ql, from_q, torch.where(pos == ql, SEP, torch.where(in_doc, from_d, PAD)))
    return tokens, pos <= ql + dl, in_doc.long()


def trimmed(*tensors: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    longest = int(pad.sum(1).max()) if len(pad) else 1
    return tuple(t[:, :longest] for t in tensors)


class GroupBatches:
    """Endless training batches: ``batch_size`` groups (shuffled epochs), each a query, its positive
    and ``group_size - 1`` negatives drawn from its pool; flattened to (B * G, T) tensors."""

    def __init__(self, task: "Retrieval", batch_size: int, seed: int):
        self.task, self.batch_size = task, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        t, g = self.task._data, self.task.group_size
        n = len(t["ex_query"])
        size = min(self.batch_size, n)                        # a tiny collection: every group each step
        while True:
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n - size + 1, size):
                idx = order[start:start + size]                                          # (B,)
                pool = t["ex_pool"][idx]                                                 # (B, P)
                pick = torch.rand(pool.shape, generator=self.generator).argsort(1)[:, :g - 1]
                docs = torch.cat([t["ex_pos"][idx, None], pool.gather(1, pick)], 1).flatten()   # (B * G,)
                queries = t["ex_query"][idx].repeat_interleave(g)                        # (B * G,)
                yield pack(t["q_ids"][queries], t["q_len"][queries], t["d_ids"][docs], t["d_len"][docs],
                           self.task.max_len)


class PairBatches:
    """A split's (query, BM25 candidate) pairs in order: tokens, pad, segments, query index, rank."""

    def __init__(self, split: str, tensors: tuple[torch.Tensor, ...], batch_size: int):
        self.split, self.tensors, self.batch_size = split, tensors, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for start in range(0, len(self.tensors[0]), self.batch_size):
            yield tuple(x[start:start + self.batch_size] for x in self.tensors)


class _Rows:
    """Encoded query rows and document rows (a document whole, or its body without the title);
    only the documents a training example or a candidate list uses are encoded."""

    def __init__(self, tok: WordTokenizer, analyze: fs.Analyzer, collection: fs.Collection,
                 analysed: list[list[str]], queries: list[list[int]]):
        self.tok, self.analyze, self.collection, self.analysed = tok, analyze, collection, analysed
        self.queries, self.docs, self.index = queries, [], {}

    def doc(self, j: int, body: bool) -> int:
        if (j, body) not in self.index:
            self.index[(j, body)] = len(self.docs)
            words = self.analyze(self.collection.body(j)) if body else self.analysed[j]
            self.docs.append(self.tok.encode_words(words))
        return self.index[(j, body)]


class Retrieval:
    """BM25 then a cross-encoder re-ranker (``encoder`` backbone, token_pairs); see the module doc."""

    metrics: tuple[str, ...] = RERANK_METRICS

    def __init__(self, data_root: str = "../shared/data/beir/cranfield", split: str = "test",
                 download_dir: str = "data/beir", first_stage_k: int = 100, rerank_k: int = 25,
                 k1: float = 0.9, b: float = 0.4, stemmer: str = "english", stopwords: str = "en",
                 vocab_size: int = 4096, query_len: int = 16, max_len: int = 96, group_size: int = 8,
                 neg_depth: int = 30, pseudo_queries: int = 5000, train_queries: float = 0.4,
                 val_queries: float = 0.1, seed: int = 0):
        if not 0 <= rerank_k <= first_stage_k:
            raise ValueError(f"need 0 <= rerank_k <= first_stage_k, got {rerank_k} and {first_stage_k}")
        if not (0 <= train_queries and 0 < val_queries and train_queries + val_queries < 1):
            raise ValueError("need train_queries >= 0, val_queries > 0 and their sum < 1: the rest is the test split")
        if group_size < 2 or neg_depth < group_size - 1:
            raise ValueError(f"need group_size >= 2 and neg_depth >= group_size - 1, got {group_size}, {neg_depth}")
        if not 1 <= query_len <= max_len - 2 or vocab_size <= len(fs.SPECIALS):
            raise ValueError("need 1 <= query_len <= max_len - 2 and vocab_size > 3")
        self.data_root, self.split, self.download_dir = data_root, split, download_dir
        self.first_stage_k, self.rerank_k, self.bm25_params = first_stage_k, rerank_k, (k1, b)
        self.analyzer_options = (stemmer, stopwords)
        self.vocab_size, self.query_len, self.max_len = vocab_size, query_len, max_len
        self.group_size, self.neg_depth, self.pseudo_queries = group_size, neg_depth, pseudo_queries
        self.fractions, self.seed = (train_queries, val_queries), seed
        self.meta = TaskMeta("token_pairs", num_classes=1, vocab_size=vocab_size, max_len=max_len)
        self.tokens_per_sample = max_len

    # ---- data -------------------------------------------------------------------------------
    @cached_property
    def collection(self) -> fs.Collection:
        folder = fs.resolve_source(self.data_root, self.download_dir)
        collection = fs.load_beir(folder, self.split)
        for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{self.split}.tsv"):
            record(folder / name, self)  # sha256s go into the run manifest
        return collection

    def check_data(self) -> None:
        self.collection  # noqa: B018  (loads; TaskDataError names the fix)

    @cached_property
    def first_stage(self) -> dict[str, list[str]]:
        """BM25's top ``first_stage_k`` doc ids for every judged query (built with the index)."""
        return self._data["rankings"]

    @property
    def tokenizer(self) -> WordTokenizer:
        return self._data["tokenizer"]

    @cached_property
    def query_splits(self) -> dict[str, list[str]]:
        return split_queries(self.collection.query_ids, *self.fractions, self.seed)

    @cached_property
    def _data(self) -> dict:
        """Everything built once per task: BM25 rankings, the vocabulary, the encoded query and
        document rows, the training examples and the val/test pair tensors."""
        c = self.collection
        analyze = fs.Analyzer(*self.analyzer_options)
        docs = [analyze(t) for t in c.texts]
        index = fs.BM25Index(docs, *self.bm25_params)
        tok = WordTokenizer.build(analyze, docs, self.vocab_size)
        q_words = [analyze(q) for q in c.queries]
        hits = index.search(q_words, max(self.first_stage_k, self.neg_depth))           # (Q, K)
        rankings = {q: [c.doc_ids[j] for j in hits[i, :self.first_stage_k]] for i, q in enumerate(c.query_ids)}
        rows = _Rows(tok, analyze, c, docs, [tok.encode_words(w) for w in q_words])
        examples, n_pseudo = self._examples(rows, index, hits)
        q_ids, q_len = padded(rows.queries, self.query_len)
        qpos, doc_pos = {q: i for i, q in enumerate(c.query_ids)}, {d: j for j, d in enumerate(c.doc_ids)}
        pairs = {s: [(qpos[q], r, rows.doc(doc_pos[d], False)) for q in self.query_splits[s]
                     for r, d in enumerate(rankings[q][:self.rerank_k])] for s in ("val", "test")}
        d_ids, d_len = padded(rows.docs, self.max_len - 2)
        width = max(self.group_size - 1, *(len(pool) for _, _, pool in examples))   # short pools repeat
        data = {"rankings": rankings, "tokenizer": tok, "qpos": qpos, "q_ids": q_ids, "q_len": q_len,
                "d_ids": d_ids, "d_len": d_len, "ex_query": torch.tensor([e[0] for e in examples]),
                "ex_pos": torch.tensor([e[1] for e in examples]),
                "ex_pool": torch.tensor([[pool[i % len(pool)] for i in range(width)] for _, _, pool in examples]),
                "n_pseudo": n_pseudo, "n_query_pairs": len(examples) - n_pseudo}
        for s, split_pairs in pairs.items():
            qi, rank, di = (torch.tensor([p[i] for p in split_pairs], dtype=torch.long) for i in range(3))
            data[s] = (*pack(q_ids[qi], q_len[qi], d_ids[di], d_len[di], self.max_len), qi, rank)
        return data

    def _examples(self, rows: "_Rows", index: fs.BM25Index, hits) -> tuple[list[tuple[int, int, list[int]]], int]:
        """Training examples (query row, positive doc row, negative pool rows): title pseudo-queries
        first, then the training queries' judged pairs; and how many are pseudo-queries."""
        c, rng, n_docs = self.collection, random.Random(self.seed), len(rows.analysed)
        examples: list[tuple[int, int, list[int]]] = []

        def add(query_row: int, pos: int, ranked: list[int], exclude: set[int], body: bool) -> None:
            pool = [j for j in ranked if j not in exclude][:self.neg_depth]
            if len(pool) < self.group_size - 1:                  # a short list: random documents fill it
                rest = [j for j in range(n_docs) if j not in exclude and j not in pool]
                pool += rng.sample(rest, min(len(rest), self.group_size - 1 - len(pool)))
            if not pool:
                raise ValueError("a training query has no negative document: the corpus is too small")
            examples.append((query_row, rows.doc(pos, body), [rows.doc(j, body) for j in pool]))

        titles = [tuple(rows.analyze(t)) for t in c.titles]
        same_title: dict[tuple[str, ...], set[int]] = {}
        for j, words in enumerate(titles):
            same_title.setdefault(words, set()).add(j)
        titled = [j for j in range(n_docs) if titles[j] and rows.analyze(c.body(j))]
        pseudo = sorted(rng.sample(titled, min(self.pseudo_queries, len(titled))))
        if pseudo:
            deepest = self.neg_depth + max(len(same_title[titles[j]]) for j in pseudo)
            for j, ranked in zip(pseudo, index.search([list(titles[j]) for j in pseudo], deepest)):
                rows.queries.append(rows.tok.encode_words(list(titles[j])))
                add(len(rows.queries) - 1, j, ranked.tolist(), same_title[titles[j]], body=True)
        qpos, doc_pos = {q: i for i, q in enumerate(c.query_ids)}, {d: j for j, d in enumerate(c.doc_ids)}
        for q in self.query_splits["train"]:
            relevant = {doc_pos[d] for d, g in c.qrels[q].items() if g > 0 and d in doc_pos}
            for j in sorted(relevant):
                add(qpos[q], j, hits[qpos[q]].tolist(), relevant, body=False)
        if not examples:
            raise ValueError("no training pairs: the collection has no titles and train_queries = 0")
        return examples, len(pseudo)

    # ---- the task interface -----------------------------------------------------------------
    def splits(self) -> dict[str, tuple[torch.Tensor, ...]]:
        return {s: self._data[s] for s in ("val", "test")}

    def example_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, pad, segments = next(iter(GroupBatches(self, 1, 0)))
        return tokens[:n], pad[:n], segments[:n]

    def batches(self, split: str, batch_size: int, seed: int = 0) -> GroupBatches | PairBatches:
        if split == "train":
            return GroupBatches(self, batch_size, seed)
        return PairBatches(split, self._data[split], batch_size * self.group_size)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B * G,): each (query, document) pair gets its group's listwise loss; the model's examples
        are the pairs, and a pair's score only has a loss through the group it is ranked in."""
        tokens, pad, segments = batch[:3]
        scores = model(*trimmed(tokens, pad, segments, pad=pad)).view(-1, self.group_size)   # (B, G)
        target = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        group_loss = F.cross_entropy(scores.float(), target, reduction="none")               # (B,)
        return group_loss.repeat_interleave(self.group_size)                                  # (B * G,)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: PairBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        scores, queries, ranks = [], [], []
        for tokens, pad, segments, qi, rank in batches:
            with autocast():
                out = model(*trimmed(tokens.to(device), pad.to(device), segments.to(device), pad=pad))
            scores.append(out.float().view(-1).cpu())
            queries.append(qi)
            ranks.append(rank)
        bm25 = self._data["rankings"]
        split_qids = self.query_splits[batches.split]
        reranked = {q: list(bm25[q]) for q in split_qids}
        if scores:
            s, qi, rank = torch.cat(scores), torch.cat(queries), torch.cat(ranks)
            for q in split_qids:
                mine = (qi == self._data["qpos"][q]).nonzero().view(-1)
                order = sorted(mine.tolist(), key=lambda i: (-float(s[i]), int(rank[i])))
                reranked[q] = [bm25[q][int(rank[i])] for i in order] + bm25[q][len(order):]
        qrels = {q: self.collection.qrels[q] for q in split_qids}
        out = fs.first_stage_metrics(reranked, qrels, RERANK_METRICS)
        bm25_only = fs.first_stage_metrics({q: bm25[q] for q in split_qids}, qrels, BM25_METRICS)
        return {**out, **{f"bm25_{k}": v for k, v in bm25_only.items()}}

    def artifacts(self, model: torch.nn.Module, folder: Path) -> dict[str, str]:
        """``first_stage.json``: BM25 alone on all judged queries and on each split, and the protocol's counts."""
        c, bm25 = self.collection, self._data["rankings"]
        every = fs.first_stage_metrics(bm25, c.qrels, BM25_METRICS)
        per_split = {s: fs.first_stage_metrics({q: bm25[q] for q in qs}, c.qrels, BM25_METRICS)
                     for s, qs in self.query_splits.items() if qs}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FIRST_STAGE_FILE
        path.write_text(json.dumps({
            "collection": {**fs.describe(c), "data_root": self.data_root, "split": self.split},
            "bm25": {"k1": self.bm25_params[0], "b": self.bm25_params[1], "stemmer": self.analyzer_options[0],
                     "stopwords": self.analyzer_options[1], "all_queries": every, **per_split},
            "queries": {s: len(qs) for s, qs in self.query_splits.items()},
            "training_groups": {"pseudo_queries": self._data["n_pseudo"],
                                "query_document_pairs": self._data["n_query_pairs"]},
            "rerank_k": self.rerank_k, "first_stage_k": self.first_stage_k}, indent=2), encoding="utf-8")
        return {FIRST_STAGE_FILE: str(path)}
