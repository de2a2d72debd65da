"""Generation stops where the student's assistant turn ends, not only at EOS, and says why it stopped.

The real-scale condition: a base checkpoint (Qwen base) whose EOS is <|endoftext|> while its ChatML
template closes turns with <|im_end|>. The student here is a tiny Llama with that tokenizer whose
weights make it a bigram chain (attention and MLP outputs zeroed, the head maps each chain token to the
next): after the prompt it writes an answer, closes the turn with <|im_end|>, then keeps going with a
hallucinated user turn until max_tokens, as an unstopped fine-tuned base model does.
"""

import json

import hf_tiny
import pytest

from jax_distill import evaluate as ev
from jax_distill.data import DataError, data_config
from jax_distill.data.chat import ChatFormat
from jax_distill.engines.base import STOP_REASONS, Completion
from jax_distill.engines.jax_engine import JaxEngine
from jax_distill.models import from_pretrained
from jax_distill.sampling import Sampler, stop_reason
from jax_distill.sampling_params import SamplingParams

ANSWER = ["<think>", "ok", "</think>", "The", "Ġanswer", "Ġis", "Ġ42", "."]  # then <|im_end|>
AFTER = ["<|im_start|>", "What", "Ġ6", "Ġ+", "Ġ7", "?"]  # a hallucinated next turn; "?" repeats itself
MAX_TOKENS = 16  # one decode bucket for every call here (one compile)


def base_tokenizer():
    """The tiny ChatML tokenizer with a base model's EOS: <|endoftext|>, not the turn's <|im_end|>."""
    tok = hf_tiny.load_tokenizer()
    tok.eos_token = "<|endoftext|>"
    return tok


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(folder, model, tokenizer) of the chain student described above."""
    import torch

    tok = base_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    model = hf_tiny.torch_model(hf_tiny.tiny_hf_config("llama", eos_token_id=eos))
    prompt_end = tok(chat_prompt(tok, "What is 1 + 1?"), add_special_tokens=False)["input_ids"][-1]  # "\n"
    chain = [prompt_end] + tok.convert_tokens_to_ids(ANSWER + ["<|im_end|>"] + AFTER)
    assert len(set(chain)) == len(chain), "a bigram chain needs distinct tokens"
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream stays the current token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed = model.model.embed_tokens.weight
        head = torch.zeros_like(model.lm_head.weight)
        for a, b in zip(chain, chain[1:] + chain[-1:]):
            head[b] += embed[a] / embed[a].norm()
        model.lm_head.weight.copy_(10.0 * head)  # logits ~ 10 sqrt(D) for the next chain token, |.| < 4 sqrt(D) else
    folder = tmp_path_factory.mktemp("base_student")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, from_pretrained(folder), tok


def chat_prompt(tok, question):
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def ids(tok, tokens):
    return tok.convert_tokens_to_ids(tokens)


def test_the_student_writes_past_its_turn_when_nothing_stops_it(student):
    """The precondition: free-running, the student closes its turn and keeps writing."""
    _, model, tok = student
    prompt = tok(chat_prompt(tok, "What is 3 + 4?"), add_special_tokens=False)["input_ids"]
    free = Sampler(model, tok).generate([prompt], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    expected = ids(tok, ANSWER + ["<|im_end|>"] + AFTER)
    assert free.token_ids[0][: len(expected)] == expected
    assert len(free.token_ids[0]) == MAX_TOKENS and free.stop_reasons == ["max_tokens"]


def test_end_of_turn_comes_from_the_training_format(student):
    """ChatFormat.turn_end_ids is the token the training data closes the assistant turn with."""
    _, _, tok = student
    fmt = ChatFormat(tok, data_config())
    assert fmt.turn_end_ids() == (tok.convert_tokens_to_ids("<|im_end|>"),) != (tok.eos_token_id,)
    tokens, mask = fmt.encode("q", "t", "a")
    assert tokens[-1] in fmt.turn_end_ids() and mask[-1] == 1
    cfg = data_config()
    cfg.template = "fallback"  # the documented base-model format: EOS ends the turn
    assert ChatFormat(tok, cfg).turn_end_ids() == (tok.eos_token_id,)
    cfg = data_config()
    cfg.end_of_turn = "<|im_end|>"  # data.end_of_turn names it explicitly
    assert ChatFormat(tok, cfg).turn_end_ids() == fmt.turn_end_ids()
    cfg.end_of_turn = "<|im_start|>"  # named, it is taken as given
    assert ChatFormat(tok, cfg).turn_end_ids() == tuple(ids(tok, ["<|im_start|>"]))
    tok = base_tokenizer()
    # a template whose generation prompt does not start its rendered assistant turn: no turn to read
    tok.chat_template = tok.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>model\n'")
    with pytest.raises(DataError, match="end-of-turn probe: chat template is not prefix-preserving"):
        ChatFormat(tok, data_config()).turn_end_ids()
    with pytest.raises(DataError, match="jax engine: cannot tell which token ends the assistant turn"):
        JaxEngine(student[1], tok)


def test_evaluation_stops_at_the_end_of_turn(student, tmp_path):
    """The evaluate stage on the base student: each sample ends at <|im_end|> with stop_reason end_of_turn,
    its output length counts the answer and the stop token only, and the answer is the turn's."""
    folder, _, tok = student
    cfg = ev.default_config()
    cfg.update(dict(checkpoint=str(folder), output_dir=str(tmp_path / "eval"), dtype="float32"))
    cfg.problems.synthetic.num = 60
    cfg.problems.eval_limit = 3
    cfg.generation.sampling.max_tokens = MAX_TOKENS
    cfg.generation.batch_size = 4
    cfg.multiple_choice.tasks = ()
    results = ev.run(cfg)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "eval_samples.jsonl").open()]
    assert len(samples) == 3
    for s in samples:
        assert s["stop_reason"] == "end_of_turn" and s["finish_reason"] == "stop"
        assert s["output_tokens"] == len(ANSWER) + 1  # the answer and <|im_end|>; nothing that followed
        assert s["text"] == tok.decode(ids(tok, ANSWER)) and s["answer"] == "42"
    o = results["generation"]["overall"]
    assert o["max_tokens_share"] == 0.0 and o["mean_output_tokens"] == len(ANSWER) + 1
    assert o["stop_reasons"] == {r: (3 if r == "end_of_turn" else 0) for r in STOP_REASONS}


def test_stop_reasons_of_the_engine(student):
    """Each way a row can end on the same student: budget and stop string through the JAX engine; EOS
    from a tokenizer whose EOS is <|im_end|> when the sampler is given no end of turn, end_of_turn when
    it is (the same token)."""
    _, model, tok = student
    request = [[{"role": "user", "content": "What is 3 + 4?"}]]
    greedy = lambda **kw: SamplingParams(temperature=0.0, top_p=1.0, **kw)  # noqa: E731
    engine = JaxEngine(model, tok)
    (cut,), = engine.generate(request, greedy(max_tokens=5))
    assert (cut.stop_reason, cut.finish_reason, cut.completion_tokens) == ("max_tokens", "length", 5)
    (stop,), = engine.generate(request, greedy(max_tokens=MAX_TOKENS, stop=(" is 42",)))
    assert stop.stop_reason == "stop" and stop.text == "<think>ok</think>The answer"
    chatml_eos = hf_tiny.load_tokenizer()  # EOS <|im_end|>
    prompt = tok(chat_prompt(tok, "What is 3 + 4?"), add_special_tokens=False)["input_ids"]
    out = Sampler(model, chatml_eos).generate([prompt], greedy(max_tokens=MAX_TOKENS))
    assert out.stop_reasons == ["eos"] and out.lengths == [len(ANSWER) + 1]
    out = Sampler(model, chatml_eos, end_of_turn_ids=ids(tok, ["<|im_end|>"]))
    assert out.generate([prompt], greedy(max_tokens=MAX_TOKENS)).stop_reasons == ["end_of_turn"]  # turn ended


@pytest.mark.parametrize(
    "last, stopped, stop_string, expected",
    [
        (7, True, False, "end_of_turn"),
        (0, True, False, "eos"),
        (5, True, False, "end_of_turn"),  # EOS and end of turn alike: the turn ended
        (9, True, False, "stop"),  # a single-token stop string or a requested stop id
        (7, True, True, "stop"),  # a stop string cut the text before the stop token
        (3, False, True, "stop"),
        (7, False, False, "max_tokens"),  # not stopped (the request named stop ids without it)
        (None, False, False, "max_tokens"),
    ],
)
def test_stop_reason_classification(last, stopped, stop_string, expected):
    assert stop_reason(last, stopped, stop_string, end_of_turn_ids=(5, 7), eos_ids=(0, 5)) == expected


def test_completion_stop_reason_defaults_to_what_finish_reason_says():
    make = lambda finish, reason="": Completion("t", "", "t", 1, 1, finish, reason)  # noqa: E731
    assert [make(f).stop_reason for f in ("length", "stop", "error:prompt_too_long")] == [
        "max_tokens", "unreported", "error"]
    assert make("stop", "eos").stop_reason == "eos"
    with pytest.raises(ValueError, match="stop_reason"):
        make("stop", "finished")


@pytest.mark.parametrize(
    "finish, reason, expected",
    [("length", None, "max_tokens"), ("stop", None, "eos"), ("stop", "###", "stop"), ("stop", 7, "stop"),
     ("stop", 9, "eos"),  # an EOS id of the generation config that the request did not name
     ("abort", None, "error")],
)
def test_vllm_stop_reason(finish, reason, expected):
    from types import SimpleNamespace

    from jax_distill.engines.vllm_engine import vllm_stop_reason

    assert vllm_stop_reason(SimpleNamespace(finish_reason=finish, stop_reason=reason), (7,)) == expected


def test_report_shows_the_max_tokens_share_beside_accuracy():
    from jax_distill import report

    cell = dict(teacher="qwen", student="tiny", method="full", variant="raw", n=40, seeds=1, accuracy=0.5,
                accuracy_lo=0.35, accuracy_hi=0.65, accuracy_sd=0.0, max_tokens_share=0.125)
    rows, _ = report.wide_table([cell, {**cell, "variant": "old", "max_tokens_share": None}], ["raw", "old"])
    assert rows[0]["raw"] == "0.500 [0.350, 0.650], max_tokens 0.125"
    assert rows[0]["old"] == "0.500 [0.350, 0.650]"  # eval results from before stop reasons were recorded
