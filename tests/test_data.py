"""Data pipeline: chat masks under each family's template, packing parity, stats, shuffle, shards,
resume, bad records. Real Grain, real HF tokenizers (tests/hf_tiny), tiny JAX model for packing parity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny
from jax_distill import data
from jax_distill.checks import ConfigError
from jax_distill.data import DataError

# ----------------------------------------------------------------------------- templates

# Qwen3's assistant rendering (excerpt of its template, single-turn part): reads reasoning_content.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama-3.1 format: header tokens, <|eot_id|>, and a system header stamped with today's date.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] | trim }}"
    "{%- set messages = messages[1:] %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# gpt-oss harmony (excerpt of its template): CoT in the analysis channel only for the final training turn.
HARMONY_TEMPLATE = (
    "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n'"
    " + 'Knowledge cutoff: 2024-06\\nCurrent date: ' + strftime_now('%Y-%m-%d') + '\\n\\nReasoning: '"
    " + (reasoning_effort if reasoning_effort is defined else 'medium') + '\\n\\n'"
    " + '# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>' }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|start|>user<|message|>' + message.content + '<|end|>' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- if loop.last and not add_generation_prompt %}"
    "{%- if 'thinking' in message %}"
    "{{- '<|start|>assistant<|channel|>analysis<|message|>' + message.thinking + '<|end|>' }}{%- endif %}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|return|>' }}"
    "{%- else %}{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"
)
HARMONY_TOKENS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>"]

Q, TRACE, ANSWER = "What is 17 + 25?", "17 + 25 = 42.\nLet me double-check: 42.", "The answer is 42."


def tokenizer_for(family: str):
    tok = hf_tiny.load_tokenizer()
    if family == "chatml":
        return tok
    if family == "qwen3":
        tok.chat_template = QWEN3_TEMPLATE
    elif family == "llama3":
        tok.add_tokens(LLAMA3_TOKENS, special_tokens=True)
        tok.bos_token = "<|begin_of_text|>"
        tok.chat_template = LLAMA3_TEMPLATE
    elif family == "harmony":
        tok.add_tokens(HARMONY_TOKENS, special_tokens=True)
        tok.chat_template = HARMONY_TEMPLATE
    elif family == "fallback":
        tok.chat_template = None
    return tok


EXPECTED_REPLY = {
    "chatml": lambda t, a: data.think_block(t, a) + "<|im_end|>",
    "qwen3": lambda t, a: data.think_block(t, a) + "<|im_end|>",
    "llama3": lambda t, a: data.think_block(t, a) + "<|eot_id|>",
    "harmony": lambda t, a: (
        f"<|channel|>analysis<|message|>{t}<|end|><|start|>assistant<|channel|>final<|message|>{a}<|return|>"
    ),
    "fallback": lambda t, a: data.think_block(t, a) + "<|im_end|>",
}


@pytest.mark.parametrize("family", list(EXPECTED_REPLY))
@pytest.mark.parametrize("trace", [TRACE, ""], ids=["trace", "answer_only"])
def test_mask_is_exactly_the_assistant_turn(family, trace):
    tok = tokenizer_for(family)
    cfg = data.data_config()
    cfg.system = "Reason step by step."
    fmt = data.ChatFormat(tok, cfg)
    ids, mask = fmt.encode(Q, trace, ANSWER, "test")
    assert mask.dtype == np.int32 and set(np.unique(mask)) == {0, 1}
    first = int(np.argmax(mask))
    assert mask[first:].all(), "assistant tokens are one contiguous run to the end"
    reply = tok.decode(ids[mask == 1])
    assert reply == EXPECTED_REPLY[family](trace, ANSWER)
    # everything before is exactly the prompt a generation request would send
    msgs = fmt.messages(Q, trace, ANSWER)
    assert list(ids[:first]) == tok(fmt.render(msgs[:-1], True), add_special_tokens=False)["input_ids"]
    # the sequence ends at the end-of-turn token; the template's trailing newline (ChatML) is no turn's
    assert ids[-1] in fmt.special_ids
    if family in ("chatml", "qwen3"):
        assert not trace or "<think>\n" + trace + "\n</think>\n\n" in reply  # the paper's format, Qwen3's own
    if family == "llama3":
        assert "Today Date: 01 Jan 2026" in tok.decode(ids[:first])  # fixed date: same tokens every run
    if family == "fallback":
        assert tok.decode(ids[:first]).endswith("User: " + Q + "\n\nAssistant:\n")


def test_mask_under_a_real_instruct_tokenizer(smollm2):
    """SmolLM2-135M-Instruct's own tokenizer and ChatML template (with its default system prompt)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    ids, mask = data.ChatFormat(tok, data.data_config()).encode(Q, TRACE, ANSWER, "test")
    assert tok.decode(ids[mask == 1]) == data.think_block(TRACE, ANSWER) + "<|im_end|>"
    assert tok.decode(ids[mask == 0]).endswith("<|im_start|>user\n" + Q + "<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_breaks_the_prefix_property_is_an_error():
    tok = hf_tiny.load_tokenizer()
    tok.chat_template = hf_tiny.CHAT_TEMPLATE.replace("'<|im_start|>assistant\n'", "'<|im_start|>model\n'")
    with pytest.raises(DataError, match="prefix"):
        data.ChatFormat(tok, data.data_config()).encode(Q, TRACE, ANSWER, "f.jsonl:line 3")
    cfg = data.data_config()
    cfg.template = "chat"
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        data.ChatFormat(tok, cfg)


# ----------------------------------------------------------------------------- pipeline fixtures


def records(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        steps = " ".join(f"{a} + {b} = {a + b}." for a, b in rng.integers(1, 50, size=(int(rng.integers(1, 6)), 2)))
        if long_every and i % long_every == long_every - 1:
            steps = " ".join([steps] * 12)
        variant = "answer_only" if i % 7 == 3 else "raw"
        out.append(dict(id=f"p{i}", problem_id=i, dataset="synthetic", question=f"Problem {i}: add the numbers.",
                        gold=str(i), answer=f"The answer is {i}.", trace="" if variant == "answer_only" else steps,
                        variant=variant, meta={"n": i}))
    return out


def write_jsonl(path, recs, extra_lines: list[bytes] = ()):
    with open(path, "wb") as f:
        for r in recs:
            f.write(json.dumps(r).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return str(path)


def config(path, **kw):
    cfg = data.data_config()
    cfg.path = (str(path),)
    cfg.read_threads = 2
    for k, v in kw.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def tok():
    return hf_tiny.load_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    recs = records(40, long_every=9)
    write_jsonl(d / "part-0.jsonl", recs[:25])
    write_jsonl(d / "part-1.jsonl", recs[25:])
    return d, recs


def drain(ds, n=None):
    it = iter(ds)
    out = []
    for b in it:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return it, out


def example_indices(cfg, tok, seed=0, **kw):
    ds, _ = data.example_dataset(cfg, tok, seq_len=4096, seed=seed, **kw)
    return [int(e["index"]) for e in ds]


# ----------------------------------------------------------------------------- packing


def test_packed_row_gives_the_same_logits_and_loss_as_each_example_alone(files, tok):
    from jax_distill.models import config_from_hf, random_model

    hf = hf_tiny.tiny_hf_config("llama").to_dict()
    hf["architectures"] = ["LlamaForCausalLM"]
    model = random_model(*config_from_hf(hf), seed=3)
    ds, _ = data.make_dataset(config(files[0], pack="best_fit"), tok, seq_len=200, batch_size=4, seed=0)
    _, batches = drain(ds, 1)
    b = batches[0]
    row = int(np.argmax(b["segment_ids"].max(axis=1)))  # the row with most examples
    segs = b["segment_ids"][row]
    assert segs.max() >= 3 and (np.diff(segs[segs > 0]) >= 0).all()
    T, k = segs.shape[0], int(segs.max())
    # one forward: the packed row, then each of its examples alone in a padded row of its own
    tokens, positions, segments = np.zeros((3, k + 2, T), np.int32)
    tokens[0], positions[0], segments[0] = b["tokens"][row], b["positions"][row], segs
    # last row: the same packed row with one segment for all, as if attention crossed examples
    tokens[-1], positions[-1], segments[-1] = b["tokens"][row], b["positions"][row], segs > 0
    for s in range(1, k + 1):
        sel = segs == s
        n = int(sel.sum())
        tokens[s, :n], positions[s, :n], segments[s, :n] = b["tokens"][row][sel], np.arange(n), 1
    logits, _ = jax.jit(model.forward)(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    logits = np.asarray(logits)

    def xent(lg, targets):
        return -np.take_along_axis(np.asarray(jax.nn.log_softmax(lg)), targets[..., None], -1)[..., 0]

    for s in range(1, k + 1):
        sel = segs == s
        n = int(sel.sum())
        targets, mask = b["targets"][row][sel], b["loss_mask"][row][sel]
        np.testing.assert_array_equal(b["positions"][row][sel], np.arange(n))
        assert b["tokens"][row][sel][1:].tolist() == targets[:-1].tolist() and mask.sum() > 0
        np.testing.assert_allclose(logits[0][sel], logits[s, :n], atol=2e-5, rtol=1e-5)
        loss_packed = (mask * xent(logits[0][sel], targets)).sum() / mask.sum()
        loss_alone = (mask * xent(logits[s, :n], targets)).sum() / mask.sum()
        np.testing.assert_allclose(loss_packed, loss_alone, rtol=1e-5)
    assert np.abs(logits[-1][segs == 2] - logits[0][segs == 2]).max() > 1e-3  # so segments matter


@pytest.mark.parametrize("pack", ["first_fit", "best_fit", "none"])
def test_batches_hold_every_example_once_and_report_packing_efficiency(files, tok, pack):
    cfg = config(files[0], pack=pack, overlong="truncate")
    ds, stats = data.make_dataset(cfg, tok, seq_len=96, batch_size=3, seed=0)
    _, batches = drain(ds)
    B = np.stack([b["segment_ids"] for b in batches])
    assert all(b[k].shape == (3, 96) and b[k].dtype == np.int32 for b in batches for k in b)
    n_examples = sum(len(np.unique(r[r > 0])) for r in B.reshape(-1, 96))
    assert n_examples == stats.used == 40 and stats.read == 40
    real = int((B > 0).sum())
    assert stats.real_tokens == real and stats.pad_tokens == B.size - real
    assert stats.loss_tokens == sum(int(b["loss_mask"].sum()) for b in batches)
    assert stats.packing_efficiency == pytest.approx(real / B.size)
    assert data.batch_stats(batches[0])["packing_efficiency"] == pytest.approx((B[0] > 0).mean())
    assert all(((b["loss_mask"] == 0) | (b["segment_ids"] > 0)).all() for b in batches)  # no loss on padding
    if pack == "none":
        assert B.max() == 1
    else:
        assert B.max() > 1
    assert f"packing efficiency {stats.packing_efficiency:.3f}" in stats.summary()


def test_overlong_policies_are_counted(files, tok):
    everything, _ = data.example_dataset(config(files[0], shuffle=False), tok, seq_len=4096, seed=0)
    lengths = [len(e["tokens"]) for e in everything]
    seq_len = 96
    n_long = sum(n > seq_len for n in lengths)
    assert n_long >= 3
    ds, stats = data.make_dataset(config(files[0], overlong="drop"), tok, seq_len=seq_len, batch_size=4, seed=0)
    drain(ds)
    assert stats.skipped["overlong_dropped"] == n_long and stats.used == 40 - n_long and stats.truncated == 0
    assert "overlong_dropped" in stats.summary() and "part-0.jsonl:line 9" in stats.summary()
    ds, stats = data.make_dataset(config(files[0], overlong="truncate"), tok, seq_len=seq_len, batch_size=4, seed=0)
    _, batches = drain(ds)
    assert stats.truncated == n_long and stats.used == 40 and stats.skipped["overlong_dropped"] == 0
    full_rows = [b["segment_ids"][r] for b in batches for r in range(4) if (b["segment_ids"][r] == 1).all()]
    assert len(full_rows) >= n_long  # each truncated example fills its row exactly


# ----------------------------------------------------------------------------- order, shards, resume


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch(files, tok):
    cfg = config(files[0], num_epochs=2)
    a, b, c = example_indices(cfg, tok, 0), example_indices(cfg, tok, 0), example_indices(cfg, tok, 1)
    assert a == b and a != c
    assert sorted(a[:40]) == sorted(a[40:]) == list(range(40)) and a[:40] != a[40:]
    assert example_indices(config(files[0], shuffle=False), tok) == list(range(40))


def test_per_host_shards_are_disjoint_and_complete(files, tok):
    shards = [set(example_indices(config(files[0]), tok, 0, process_index=i, process_count=3)) for i in range(3)]
    assert sum(len(s) for s in shards) == 40 and set().union(*shards) == set(range(40))
    assert all(len(s) in (13, 14) for s in shards)
    with pytest.raises(DataError, match="process_index"):
        data.example_dataset(config(files[0]), tok, seq_len=64, seed=0, process_index=3, process_count=3)


@pytest.mark.parametrize("pack", ["first_fit", "best_fit", "none"])
def test_iterator_state_resumes_at_exactly_the_next_batch(files, tok, pack):
    cfg = config(files[0], pack=pack, num_epochs=2, overlong="truncate")
    kw = dict(seq_len=80, batch_size=2, seed=5, process_index=1, process_count=2)
    ds, stats = data.make_dataset(cfg, tok, **kw)
    it, _ = drain(ds, 7)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    stats_at_k = stats.as_dict()
    rest = list(it)
    final = stats.as_dict()
    assert len(rest) > 5
    ds2, stats2 = data.make_dataset(cfg, tok, **kw)
    it2 = iter(ds2)
    it2.set_state(state)
    # token counts are those of the batches emitted; record counts rewind to what the packer re-reads
    token_keys = ("batches", "rows", "real_tokens", "loss_tokens", "pad_tokens")
    assert {k: stats2.as_dict()[k] for k in token_keys} == {k: stats_at_k[k] for k in token_keys}
    rest2 = list(it2)
    assert len(rest2) == len(rest)
    for x, y in zip(rest, rest2):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert stats2.as_dict() == final


def test_parquet_gives_the_same_examples_as_jsonl(files, tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = files[1][:25]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "part-0.parquet", row_group_size=7)
    cfg = dict(shuffle=False)
    js = list(data.example_dataset(config(files[0] / "part-0.jsonl", **cfg), tok, seq_len=4096, seed=0)[0])
    pa_ = list(data.example_dataset(config(tmp_path / "*.parquet", **cfg), tok, seq_len=4096, seed=0)[0])
    assert len(js) == len(pa_) == 25
    for x, y in zip(js, pa_):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["loss_mask"], y["loss_mask"])


def test_jsonl_source_reads_each_line_across_scan_chunks(tmp_path, monkeypatch):
    from jax_distill.data.sources import JsonlIndex

    monkeypatch.setattr(JsonlIndex, "CHUNK", 5)  # many chunk boundaries inside lines
    content = b'{"a": 1}\r\n\n   \n{"b": "\xc3\xa9t\xc3\xa9"}\n\n{"c": [1, 2, 3]}'  # CRLF, blanks, no final newline
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    src = data.RecordSource([str(path)])
    expected = [(i + 1, line) for i, line in enumerate(content.split(b"\n")) if line.strip()]
    assert len(src) == 3
    assert [(r["line"], r["raw"]) for r in (src[i] for i in range(3))] == expected
    import pickle

    again = pickle.loads(pickle.dumps(src))  # what Grain workers receive: no open files, same reads
    assert again[2]["raw"] == src[2]["raw"] and src.where(0, 4) == f"{path}:line 4"


# ----------------------------------------------------------------------------- bad input


BAD_LINES = [  # (line bytes, reason, field)
    (json.dumps(dict(question="q?", trace="t")).encode(), "missing_field", "answer"),
    (json.dumps(dict(question=7, trace="t", answer="a")).encode(), "wrong_type", "question"),
    (b'{"question": "caf\xe9?", "trace": "t", "answer": "a"}', "invalid_utf8", ""),
    (b'{"question": "q?", "trace": "t", "answer": "a"', "invalid_json", ""),
    (json.dumps(dict(question="q?", trace="", answer="a", variant="raw")).encode(), "empty_trace", "trace"),
    (json.dumps(dict(question="q?", trace="  ", answer="a", variant="compressed")).encode(), "empty_trace", "trace"),
    (json.dumps(dict(question="q?", trace="", answer="a")).encode(), "empty_trace", "trace"),  # no variant = raw
    (json.dumps(dict(question="q?", trace=None, answer="a")).encode(), "missing_field", "trace"),
    (b'{"question": "\\ud800?", "trace": "t", "answer": "a"}', "invalid_utf8", "question"),
    (json.dumps(dict(question="q?", trace="t", answer="")).encode(), "empty_field", "answer"),
    (b"[1, 2]", "invalid_json", ""),
]


def test_bad_records_are_counted_and_located(tok, tmp_path):
    good = records(5)
    ok_answer_only = dict(question="q?", trace="", answer="a", variant="answer_only")
    ok_truncated = dict(question="q?", trace="", answer="a", variant="truncated")
    bad = [b for b, _, _ in BAD_LINES] + [b"   "]
    path = write_jsonl(tmp_path / "bad.jsonl", good + [ok_answer_only, ok_truncated], bad)
    ds, stats = data.make_dataset(config(path), tok, seq_len=256, batch_size=2, seed=0)
    drain(ds)
    expected = {r: sum(1 for _, reason, _ in BAD_LINES if reason == r) for r in data.SKIP_REASONS}
    assert stats.skipped == expected
    assert stats.read == 7 + len(BAD_LINES) and stats.used == 7  # blank line is no record
    for i, (_, reason, field) in enumerate(BAD_LINES):
        where = f"bad.jsonl:line {8 + i}" + (f" ({field})" if field else "")
        assert any(w.endswith(where) for w in stats.first[reason]), (where, stats.first)
    assert "empty_trace=3" in stats.summary() and "invalid_utf8=2" in stats.summary()
    # the empty-trace rule is configurable: allow raw traces to be empty
    ds, stats = data.make_dataset(config(path, trace_required=("compressed",)), tok, seq_len=256, batch_size=2, seed=0)
    drain(ds)
    assert stats.skipped["empty_trace"] == 1


def test_strict_mode_names_file_line_and_field(tok, tmp_path):
    path = write_jsonl(tmp_path / "strict.jsonl", records(3), [BAD_LINES[0][0]])
    ds, _ = data.make_dataset(config(path, strict=True, shuffle=False), tok, seq_len=256, batch_size=2, seed=0)
    with pytest.raises(DataError, match=r"strict\.jsonl:line 4: field 'answer': missing_field"):
        drain(ds)


def test_custom_field_mapping_and_config_errors(tok, tmp_path):
    recs = [dict(prompt=f"Q{i}?", out={"reasoning": f"step {i}", "final": f"A{i}"}) for i in range(4)]
    path = write_jsonl(tmp_path / "custom.jsonl", recs)
    cfg = config(path, shuffle=False)
    cfg.fields.question, cfg.fields.trace, cfg.fields.answer = "prompt", "out.reasoning", "out.final"
    ex = list(data.example_dataset(cfg, tok, seq_len=256, seed=0)[0])
    assert tok.decode(ex[2]["targets"][ex[2]["loss_mask"] == 1]) == data.think_block("step 2", "A2") + "<|im_end|>"
    with pytest.raises(ConfigError, match="config.data.path: nothing matches"):
        data.make_dataset(config(tmp_path / "nope*.jsonl"), tok, seq_len=64, batch_size=1, seed=0)
    with pytest.raises(ConfigError, match="config.data.pack"):
        data.make_dataset(config(path, pack="greedy"), tok, seq_len=64, batch_size=1, seed=0)
    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", [dict(question="q")] * 3)
    ds, _ = data.make_dataset(config(all_bad, num_epochs=0), tok, seq_len=64, batch_size=1, seed=0)
    with pytest.raises(DataError, match="no usable record"):
        drain(ds, 1)


def test_worker_processes_give_the_same_stream_and_resume_exactly(files, tok):
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags
    kw = dict(seq_len=80, batch_size=2, seed=1)
    cfg = config(files[0], overlong="truncate")
    ds, stats0 = data.make_dataset(cfg, tok, **kw)
    _, ref = drain(ds)
    cfg.workers = 2
    ds, stats = data.make_dataset(cfg, tok, **kw)
    it, got = drain(ds, 4)
    state = json.loads(json.dumps(it.get_state()))
    got += list(it)
    it.close()
    assert len(got) == len(ref) and stats.as_dict() == stats0.as_dict()
    it = iter(ds)
    it.set_state(state)
    rest = list(it)
    it.close()
    for x, y in zip(got + rest, ref + ref[4:], strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_validate_names_the_bad_field(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", records(2))
    data.validate(config(path))
    bad = [("template_kwargs", "{not json"), ("template_date", "01/01/2026"), ("read_threads", 0),
           ("overlong", "clip"), ("format", "csv"), ("path", ()), ("path", (str(tmp_path / "none*.jsonl"),))]
    for field, value in bad:
        cfg = config(path)
        cfg[field] = value
        with pytest.raises(ConfigError, match=f"config.data.{field}:"):
            data.validate(cfg)
    cfg = config(path)
    cfg.fields.answer = ""
    with pytest.raises(ConfigError, match="config.data.fields.answer:"):
        data.validate(cfg)
    # template variables are one JSON object, parsed once into the chat format
    fmt = data.ChatFormat(tokenizer_for("harmony"), config(path, template_kwargs='{"reasoning_effort": "high"}'))
    assert fmt.template_kwargs == {"reasoning_effort": "high"}
    ids, _ = fmt.encode(Q, TRACE, ANSWER, "test")
    assert "Reasoning: high" in fmt.tokenizer.decode(ids)
