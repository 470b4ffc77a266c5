"""The arith task: traces are right, rewards follow the rules, splits are seeded, and the shared
pretrained checkpoint is trained once, cached by configuration and loaded by every policy."""
import json

import pytest
import torch

from harness_m3po.arith import TOK, Arith, completion_length, decode, encode, parse_prompts, problems, render, score
from harness_m3po.policy import build_policy


def test_render_hand_checked():
    digits, ops = torch.tensor([[3, 5, 2, 4]]), torch.tensor([[0, 2, 1]])          # 3 + 5 * 2 - 4
    prompt, completion, answer = render(digits, ops)
    assert decode(prompt[0].tolist()) == "3+5*2-4?"
    assert decode(completion[0].tolist()) == "3+5=8;8*2=6;6-4=2####2."
    assert answer.item() == 2 and completion.shape[1] == completion_length(3)
    d, o = parse_prompts(prompt)
    assert torch.equal(d, digits) and torch.equal(o, ops)


def test_traces_follow_mod_10_arithmetic():
    prompt, completion, answer = render(*problems(200, 4, seed=1))
    for p, c, a in zip(prompt.tolist(), completion.tolist(), answer.tolist()):
        text = decode(c)
        steps, tail = text.split("####")
        assert tail == f"{a}."
        r = int(decode(p)[0])
        for step in steps.split(";"):
            lhs, rhs = step.split("=")
            x, op, y = int(lhs[0]), lhs[1], int(lhs[2])
            assert x == r
            r = {"+": x + y, "-": x - y, "*": x * y}[op] % 10
            assert int(rhs) == r
        assert r == a


def test_score_rules():
    ans = torch.tensor([2, 2, 2, 2, 2, 2])
    rows = ["1+1=2####2.", "1+1=2####3.", "1+1=2##2.", "1+1=2####2", "1+1=2########2.", "####2.7"]
    width = max(map(len, rows))
    comp = torch.tensor([encode(r) + [TOK["."]] * (width - len(r)) if r.endswith(".") else
                         encode(r) + [TOK["0"]] * (width - len(r)) for r in rows])
    out = score(comp, ans)
    assert out["exact"].tolist() == [True, False, False, False, False, True]
    assert out["format"].tolist() == [True, True, False, False, False, True]   # no EOS / repeated delimiter: 0
    assert out["answer"].tolist() == [2, 3, -1, -1, -1, 2]


def test_splits_seeded_and_disjoint():
    task = Arith(ops=2, n_train=50, n_eval=20, seed=4)
    s = task.splits()
    assert s["train"][0].shape == (50, 6) and s["val"][0].shape == (20, 6)
    assert not torch.equal(s["val"][0], s["test"][0])
    assert torch.equal(Arith(ops=2, n_train=50, n_eval=20, seed=4).splits()["test"][0], s["test"][0])
    assert task.meta.max_len == 6 + completion_length(2) + 2 and task.meta.vocab_size == 18
    with pytest.raises(ValueError, match="max_new_tokens"):
        Arith(ops=2, max_new_tokens=5)


def test_pretrained_once_cached_and_shared(tmp_path, monkeypatch):
    import harness_m3po.pretrain as pre

    calls = []
    real = pre.pretrain_lm
    monkeypatch.setattr(pre, "pretrain_lm", lambda task, policy: calls.append(1) or real(task, policy))
    task = Arith(ops=1, n_train=64, n_eval=16, pretrain_steps=3, pretrain_batch=8, cache_dir=str(tmp_path))
    torch.manual_seed(0)
    a = build_policy(task.meta, dim=16, depth=1, heads=2, gate="cosine")
    b = build_policy(task.meta, dim=16, depth=1, heads=2, gate="jsd")
    rng = torch.get_rng_state()
    task.prepare(a)
    assert torch.equal(torch.get_rng_state(), rng)            # pretraining does not move the run's RNG
    task.prepare(b)
    assert len(calls) == 1
    assert all(torch.equal(x, y) for x, y in zip(a.lm.state_dict().values(), b.lm.state_dict().values()))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")
    info = json.loads((tmp_path / files[0]).read_text())
    assert info["pretrain"]["steps"] == 3 and 0 <= info["val_exact_match"] <= 1
    # a new task object (a new suite run) loads the file instead of training
    fresh = Arith(ops=1, n_train=64, n_eval=16, pretrain_steps=3, pretrain_batch=8, cache_dir=str(tmp_path))
    c = build_policy(fresh.meta, dim=16, depth=1, heads=2)
    fresh.prepare(c)
    assert len(calls) == 1
    assert torch.equal(c.lm.tok_embed.weight, a.reference.tok_embed.weight)
    # another architecture is another checkpoint
    d = build_policy(fresh.meta, dim=8, depth=1, heads=2)
    fresh.prepare(d)
    assert len(calls) == 2


def test_loss_and_evaluate_through_the_task(tmp_path):
    task = Arith(ops=1, n_train=64, n_eval=16, pretrain_steps=2, pretrain_batch=8, cache_dir=str(tmp_path))
    torch.manual_seed(0)
    pol = build_policy(task.meta, dim=16, depth=1, heads=2, gate="jsd", lam=0.5)
    prompts, answers = next(iter(task.batches("train", 4, seed=0)))
    loss = task.loss(pol, (prompts, answers))
    loss.backward()
    assert torch.isfinite(loss)
    out = task.evaluate(pol, task.batches("val", 8), torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert set(out) == {"exact_match", "answer_format", "trace_match"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    with pytest.raises(TypeError, match="m3po.policy"):
        task.loss(torch.nn.Linear(2, 2), (prompts, answers))
