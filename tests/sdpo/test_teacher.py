import pytest
import torch
from peft import LoraConfig, get_peft_model

from sdpo.config import SelfDistillationConfig
from sdpo.forward import response_logits
from sdpo.models import load_model_and_tokenizer
from sdpo.reprompt import TeacherContext, tokenize_teacher_inputs
from sdpo.teacher import EmaTeacher, LiveTeacher, TrustRegionTeacher, make_teacher

TAU = 0.1


def lora(model):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.1)
    return get_peft_model(model, cfg)


def perturb(params, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def lora_params(model, adapter):
    return [p for n, p in model.named_parameters() if f".{adapter}." in n]


def snapshot(model):
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def batch(tiny_model_path):
    _, tok = load_model_and_tokenizer(tiny_model_path)
    ctx = [TeacherContext([{"role": "user", "content": "Sum a list.\nCorrect solution:\n\nsum(xs)"}], True, False),
           TeacherContext([{"role": "user", "content": "Reverse."}], False, True)]
    resp = torch.tensor([[11, 12, 13, 14], [15, 16, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return tokenize_teacher_inputs(tok, ctx, resp, mask, 512, "right")


@pytest.fixture
def model(tiny_model_path):
    return load_model_and_tokenizer(tiny_model_path)[0]


@pytest.fixture
def fresh(tiny_model_path):
    return lambda: load_model_and_tokenizer(tiny_model_path)[0]


def student_logits(student, batch):
    """The student's response logits in eval mode (no LoRA dropout), train/eval flag restored."""
    was_training = student.training
    student.eval()
    with torch.no_grad():
        out = response_logits(student, batch)
    student.train(was_training)
    return out


def test_make_teacher_follows_config(model):
    assert isinstance(make_teacher(SelfDistillationConfig(teacher_regularization="ema"), model), EmaTeacher)
    assert isinstance(make_teacher(SelfDistillationConfig(teacher_regularization="trust-region"), model),
                      TrustRegionTeacher)
    assert isinstance(make_teacher(SelfDistillationConfig(teacher_regularization="live"), model), LiveTeacher)


def test_full_ema_moves_exactly_tau_of_the_gap(model, batch):
    teacher = EmaTeacher(model, TAU)
    assert torch.equal(teacher.logits(batch), student_logits(model, batch))  # starts as a copy
    perturb(model.parameters(), seed=1)
    before, student = snapshot(teacher.model), snapshot(model)
    teacher.update(model)
    after = snapshot(teacher.model)
    assert before.keys() == after.keys() == student.keys()
    for name in before:
        want = before[name] + TAU * (student[name] - before[name])
        torch.testing.assert_close(after[name], want, atol=1e-7, rtol=1e-6)
    moved = max((after[n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-3
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    logits = teacher.logits(batch)
    assert not logits.requires_grad
    assert not torch.allclose(logits, student_logits(model, batch))


def test_full_ema_hidden_matches_logits(model, batch):
    teacher = EmaTeacher(model, TAU)
    perturb(model.parameters(), seed=2)
    teacher.update(model)
    hidden, weight = teacher.hidden(batch)
    torch.testing.assert_close(hidden @ weight.T, teacher.logits(batch), atol=1e-5, rtol=0)


def test_lora_ema_updates_only_the_teacher_adapter(model, fresh, batch):
    student = lora(model)
    student.train()
    perturb(lora_params(student, "default"), seed=3)
    trainable = sorted(n for n, p in student.named_parameters() if p.requires_grad)
    teacher = EmaTeacher(student, TAU)
    assert teacher.logits(batch).equal(student_logits(student, batch))  # starts as a copy of the adapter
    perturb(lora_params(student, "default"), seed=4)  # as if the optimizer stepped
    before = snapshot(student)
    teacher.update(student)
    after = snapshot(student)
    teacher_names = [n for n in before if ".teacher." in n]
    assert teacher_names
    for name in before:
        if name in teacher_names:
            student_name = name.replace(".teacher.", ".default.")
            want = before[name] + TAU * (before[student_name] - before[name])
            torch.testing.assert_close(after[name], want, atol=1e-7, rtol=1e-6)
            assert not torch.equal(after[name], before[name])
        else:  # base weights and the student's adapter untouched
            assert torch.equal(after[name], before[name]), name

    # the teacher forward leaves the student as it was: active adapter, trainable set, train mode
    logits = teacher.logits(batch)
    assert student.active_adapter == "default" and student.training
    assert sorted(n for n, p in student.named_parameters() if p.requires_grad) == trainable
    assert torch.equal(logits, teacher.logits(batch))  # eval mode: no LoRA dropout

    # independent check: a plain peft model whose only adapter holds the teacher weights gives the same logits
    other = lora(fresh())
    with torch.no_grad():
        for n, p in other.named_parameters():
            if ".default." in n:
                p.copy_(dict(student.named_parameters())[n.replace(".default.", ".teacher.")])
    torch.testing.assert_close(logits, student_logits(other.eval(), batch), atol=1e-6, rtol=0)


def test_lora_ema_teacher_is_invisible_to_the_optimizer(model, batch):
    student = lora(model)
    perturb(lora_params(student, "default"), seed=5)
    teacher = EmaTeacher(student, TAU)
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    teacher.logits(batch)
    before = snapshot(student)
    response_logits(student, batch).logsumexp(-1).mean().backward()
    opt.step()
    after = snapshot(student)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".default." in n for n in changed)
    assert all(p.grad is None for p in lora_params(student, "teacher"))


def test_trust_region_full_is_lerp_of_initial_and_current(model, fresh, batch):
    teacher = TrustRegionTeacher(model, TAU)
    perturb(model.parameters(), seed=6)
    ref = student_logits(fresh(), batch).double()  # the initial model, loaded independently
    cur = student_logits(model, batch).double()
    got = teacher.logits(batch)
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), ref + TAU * (cur - ref), atol=1e-5, rtol=0)
    assert not torch.allclose(got, student_logits(model, batch), atol=1e-3)


def test_trust_region_lora_ref_is_base_without_adapter(model, fresh, batch):
    student = lora(model)
    perturb(lora_params(student, "default"), seed=7)
    teacher = TrustRegionTeacher(student, TAU)
    ref = student_logits(fresh(), batch).double()
    cur = student_logits(student, batch).double()
    torch.testing.assert_close(teacher.logits(batch).double(), ref + TAU * (cur - ref), atol=1e-5, rtol=0)
    hidden, weight = teacher.hidden(batch)
    torch.testing.assert_close(hidden @ weight.T, teacher.logits(batch), atol=1e-5, rtol=0)
    assert all(p.requires_grad for p in lora_params(student, "default"))


def test_live_teacher_is_the_student_without_grad(model, batch):
    teacher = LiveTeacher(model)
    perturb(model.parameters(), seed=8)
    got = teacher.logits(batch)
    assert not got.requires_grad and torch.equal(got, student_logits(model, batch))
    teacher.update(model)
    assert torch.equal(teacher.logits(batch), got)


def test_full_ema_state_dict_round_trip(model, fresh, batch):
    teacher = EmaTeacher(model, TAU)
    for seed in (9, 10):
        perturb(model.parameters(), seed=seed)
        teacher.update(model)
    state = teacher.state_dict()
    resumed = EmaTeacher(fresh(), 0.5)  # a new run starts from another model and rate
    assert not torch.equal(resumed.logits(batch), teacher.logits(batch))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.logits(batch), teacher.logits(batch))
    assert resumed.update_rate == TAU
    with pytest.raises(ValueError, match="teacher_regularization"):
        LiveTeacher(model).load_state_dict(state)


def test_lora_ema_state_dict_round_trip(model, fresh, batch):
    student = lora(model)
    perturb(lora_params(student, "default"), seed=11)
    teacher = EmaTeacher(student, TAU)
    perturb(lora_params(student, "default"), seed=12)
    teacher.update(student)
    state = teacher.state_dict()
    assert all(".{}." in k for k in state["weights"])
    resumed = EmaTeacher(lora(fresh()), TAU)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.logits(batch), teacher.logits(batch))
    with pytest.raises(ValueError, match="LoRA"):
        EmaTeacher(fresh(), TAU).load_state_dict(state)


def test_trust_region_state_keeps_the_initial_ref(model, fresh, batch):
    teacher = TrustRegionTeacher(model, TAU)
    state = teacher.state_dict()
    perturb(model.parameters(), seed=13)
    resumed = TrustRegionTeacher(model, TAU)  # on resume the student is already trained: wrong ref ...
    assert not torch.allclose(resumed.logits(batch), teacher.logits(batch))
    resumed.load_state_dict(state)  # ... until the saved ref is loaded
    assert torch.equal(resumed.logits(batch), teacher.logits(batch))


def test_bf16_ema_keeps_a_float32_master(model, fresh, batch):
    model.to(torch.bfloat16)
    teacher = EmaTeacher(model, 0.01)
    assert teacher.master is not None  # auto: teacher weights are below float32
    lossy = EmaTeacher(fresh().to(torch.bfloat16), 0.01, fp32_master=False)  # same initial teacher
    start = {k: v.double() for k, v in teacher.master.items()}
    perturb(model.parameters(), seed=14, scale=0.002)
    student = snapshot(model)
    for _ in range(3):
        teacher.update(model)
        lossy.update(model)
    params = dict(teacher.model.named_parameters())
    for k, m in teacher.master.items():
        want = student[k] + (start[k] - student[k]) * 0.99**3  # three EMA steps towards a fixed student
        torch.testing.assert_close(m.double(), want, atol=1e-7, rtol=1e-5)
        assert torch.equal(params[k], m.to(torch.bfloat16))
    # without the master, steps of tau * gap below half a bf16 ulp round away and the teacher stalls
    moved_master = sum((m.double() - start[k]).abs().sum().item() for k, m in teacher.master.items())
    moved_lossy = sum((p.double() - start[k]).abs().sum().item() for k, p in lossy.model.named_parameters())
    assert moved_lossy < 0.5 * moved_master
    # the checkpoint keeps the float32 master, so a resumed teacher continues exactly
    resumed = EmaTeacher(fresh().to(torch.bfloat16), 0.5)
    resumed.load_state_dict(teacher.state_dict())
    assert all(torch.equal(resumed.master[k], teacher.master[k]) for k in teacher.master)
    assert torch.equal(resumed.logits(batch), teacher.logits(batch))
