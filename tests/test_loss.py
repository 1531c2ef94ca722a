"""The loss is a pure function: its numbers are worked out by hand here."""

import math

import pytest
import torch
from torch.testing import assert_close

from lutra.training.loss import dpo_nll_loss, nll, sequence_logps, sft_loss


def test_dpo_term_is_log2_when_policy_equals_reference():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    loss, m = dpo_nll_loss(pc, pr, pc.clone(), pr.clone(), torch.tensor([3, 5]), nll_weight=0.0)
    assert_close(loss, torch.tensor(math.log(2)))
    assert_close(m["rewards/margins"], torch.tensor(0.0))
    assert_close(m["rewards/accuracies"], torch.tensor(0.0))


def test_dpo_nll_hand_computed():
    # pair 1: chosen ratio = -2 - (-3) = 1, rejected ratio = -6 - (-5) = -1, beta 0.5 -> logit 0.5 * 2 = 1
    # pair 2: chosen ratio = -4 - (-4) = 0, rejected ratio = -1 - (-2) = 1, beta 0.5 -> logit -0.5
    pc, pr = torch.tensor([-2.0, -4.0]), torch.tensor([-6.0, -1.0])
    rc, rr = torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -2.0])
    lengths = torch.tensor([2, 4])
    dpo = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2  # -log sigmoid(x) = log(1 + e^-x)
    nll_seq_mean = (2.0 / 2 + 4.0 / 4) / 2  # = 1.0
    loss, m = dpo_nll_loss(pc, pr, rc, rr, lengths, beta=0.5, nll_weight=0.5, nll_reduction="seq_mean")
    assert_close(loss, torch.tensor(dpo + 0.5 * nll_seq_mean))
    assert_close(m["loss/dpo"], torch.tensor(dpo))
    assert_close(m["rewards/chosen"], torch.tensor((0.5 * 1 + 0.5 * 0) / 2))
    assert_close(m["rewards/rejected"], torch.tensor((0.5 * -1 + 0.5 * 1) / 2))
    assert_close(m["rewards/margins"], torch.tensor((1.0 + -0.5) / 2))
    assert_close(m["rewards/accuracies"], torch.tensor(0.5))
    assert_close(m["logps/chosen"], torch.tensor(-3.0))


def test_nll_reductions_hand_computed():
    logps, lengths = torch.tensor([-6.0, -2.0]), torch.tensor([3, 1])
    assert_close(nll(logps, lengths, "seq_mean"), torch.tensor((2.0 + 2.0) / 2))
    assert_close(nll(logps, lengths, "token_mean"), torch.tensor(8.0 / 4))
    assert_close(nll(logps, lengths, "sum"), torch.tensor(8.0 / 2))
    logps2, lengths2 = torch.tensor([-6.0, -1.0]), torch.tensor([3, 1])
    assert_close(nll(logps2, lengths2, "seq_mean"), torch.tensor((2.0 + 1.0) / 2))
    assert_close(nll(logps2, lengths2, "token_mean"), torch.tensor(7.0 / 4))
    with pytest.raises(ValueError, match="nll_reduction"):
        nll(logps, lengths, "mean")


def test_dpo_weight_zero_leaves_nll_only_and_sft_loss():
    pc, pr = torch.tensor([-6.0]), torch.tensor([-1.0])
    loss, _ = dpo_nll_loss(pc, pr, pc, pr, torch.tensor([3]), dpo_weight=0.0, nll_weight=1.0)
    assert_close(loss, torch.tensor(2.0))
    loss2, _ = sft_loss(pc, torch.tensor([3]))
    assert_close(loss2, torch.tensor(2.0))


def test_sequence_logps_masks_prompt_and_padding():
    # vocab 2, uniform logits -> every token has log-prob log(1/2)
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    assert_close(sequence_logps(logits, labels, mask), torch.tensor([2 * math.log(0.5)]))
    # a confident correct prediction contributes ~0
    logits2 = torch.tensor([[[10.0, -10.0], [0.0, 0.0]]])
    out = sequence_logps(logits2, torch.tensor([[0, 1]]), torch.tensor([[1, 0]]))
    assert_close(out, torch.tensor([-math.log1p(math.exp(-20.0))]))


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    loss, _ = dpo_nll_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), torch.tensor([1]), beta=1.0, nll_weight=0.0)
    loss.backward()
    assert_close(pc.grad, torch.tensor([-0.5]))  # d/dx -log sigmoid(x) at 0 = -1/2, times beta
    assert_close(pr.grad, torch.tensor([0.5]))
