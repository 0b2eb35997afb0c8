"""NCCL's rule for collectives, which gloo on a CPU forgives: every tensor that goes into one lives on the model's
device. (1) The project's only tensor collective is model.all_sum (read from the source); (2) its callers hand it the
model's device: dist.all_reduce is replaced by a check, in one process, on every device this machine has (on a GPU
machine tests/gpu_check.sh runs the CUDA case)."""
import ast, os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist

import grpo
import model as M
import sft
from test_grpo import fixed_batch, tiny_model, uargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSOR_COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                      "broadcast", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter", "send", "recv"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_the_only_tensor_collective_is_all_sum():
    found = []
    for fn in sorted(f for f in os.listdir(ROOT) if f.endswith(".py")):
        tree = ast.parse(open(os.path.join(ROOT, fn)).read())
        for fdef in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(fdef):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in TENSOR_COLLECTIVES and "dist" in ast.unparse(node.func.value):
                    found.append((fn, fdef.name, node.func.attr))
    assert sorted(set(found)) == [("model.py", "all_sum", "all_reduce")], found


@pytest.mark.parametrize("device", DEVICES)
def test_collectives_get_tensors_on_the_model_device(device, monkeypatch):
    seen = []

    def all_reduce(t, *a, **k):  # one process: the sum over ranks is the tensor itself
        seen.append(t.device)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    dev = torch.device(device)
    model = tiny_model().to(dev)
    rows, rewards = fixed_batch()
    adv = grpo.group_advantages(rewards).flatten()
    upd = grpo.update(model, torch.optim.SGD(model.parameters(), lr=0.1), rows, adv, torch.ones(len(rows)), uargs(),
                      1, pad_id=3)
    grpo.step_metrics(0, rewards, rewards.amax(1) == rewards.amin(1), [c for _, c in rows], [3], upd, False,
                      dict(t_gen=1.0, t_train=1.0, t_mine=0.0), dev)
    data = [(p + c, len(p)) for p, c in rows]
    sft.evaluate(model, data, 0, 1, 4, 0, dev, nullcontext())
    assert len(seen) == 3 and all(d == model.lm_head.weight.device for d in seen), seen
