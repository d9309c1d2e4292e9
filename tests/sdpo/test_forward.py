"""sdpo.forward: the [prompt | response] layout shared by student and teacher, and cutting micro-batches out of it
(the response-aligned forwards themselves are checked against unpadded forwards in test_reprompt.py)."""

import torch

from sdpo.forward import eval_mode, student_inputs


def test_student_inputs_layout():
    resp = torch.tensor([[5, 6, 7], [8, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    b = student_inputs([[1, 2], [3, 4, 5, 6]], resp, mask, pad_id=0)
    assert b.response_start == 4 and b.response_len == 3
    assert b.input_ids.tolist() == [[0, 0, 1, 2, 5, 6, 7], [3, 4, 5, 6, 8, 0, 0]]
    assert b.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    assert b.position_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 4, 4]]


def test_rows_and_trimmed_cut_a_micro_batch():
    resp = torch.tensor([[5, 6], [8, 0], [9, 9]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    b = student_inputs([[1], [2, 3, 4, 5], [6, 7]], resp, mask, pad_id=0)
    part = b.rows(torch.tensor([0, 2]))
    assert part.input_ids.tolist() == [[0, 0, 0, 1, 5, 6], [0, 0, 6, 7, 9, 9]] and part.response_start == 4
    cut = part.trimmed()  # the columns that are padding in every row go; the response stays aligned
    assert cut.input_ids.tolist() == [[0, 1, 5, 6], [6, 7, 9, 9]] and cut.response_start == 2
    assert cut.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert cut.position_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    assert cut.response_len == part.response_len == 2
    assert b.rows(torch.tensor([1])).trimmed().input_ids.tolist() == [[2, 3, 4, 5, 8, 0]]  # nothing to cut


def test_eval_mode_restores_every_module_s_own_flag():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, False, True]
