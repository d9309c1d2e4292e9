import random

import torch

from sdpo.toy.corpus import CorpusExample, encode
from sdpo.toy.generator import generate_problem
from sdpo.toy.measure import extract_program, response_logprobs, solved


def test_response_logprobs_match_a_float64_reference(tiny_model_path):
    from sdpo.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_path)
    rng = random.Random(0)
    exs = []
    for d in (1, 3):  # different lengths: exercises the right padding
        p = generate_problem(rng, depth=d)
        exs.append(CorpusExample("direct", p.messages(), p.solution(), p.id))
    got = response_logprobs(model, tok, exs)
    for ex, value in zip(exs, got, strict=True):
        ids, labels = encode(tok, ex)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        ref = sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if labels[t] != -100)
        assert abs(value - ref) < 1e-3 * max(1.0, abs(ref))


def test_extract_program_and_solved():
    p = generate_problem(random.Random(1), depth=2)
    assert extract_program("text\n```py\nA\n```\n```python\nB\n```") == "B\n"
    assert extract_program("```\nC\n```") == "C\n"
    assert extract_program("no code") is None
    assert solved("Here:\n" + p.solution(), p)
    assert not solved("```python\nprint(0)\n```", p)
    assert not solved("print(0)", p)
