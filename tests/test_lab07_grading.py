"""Lab 7 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab07_qat"
POINTS = {"test_ste_forward": 2, "test_ste_backward": 3, "test_pact_alpha_gradient": 2, "test_lsq_forward": 2,
          "test_lsq_backward": 5, "test_quantized_forward": 3, "test_qat_finetune": 4, "test_zero_share_minmax": 2,
          "test_zero_share_initial": 2, "test_design": 4}
WRITTEN = {"lsq_step_where": 3}

DESIGN = '{"method": "lsq", "granularity": "tensor", "optimizer": "sgd", "lr": 0.03, "epochs": %d, "batch_size": 64}'


WRAPPER = '''

def fake_quant_ste(x, scale, zero_point, qmin, qmax):
    return FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax)
'''

#: A right LSQ forward pass and the start of its backward pass (the mask of v): the mistakes in the step's
#: gradient below add only their last lines.
LSQ_UP_TO_THE_STEP_GRADIENT = '''
class LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, step, qmin, qmax, grad_scale):
        q = torch.round(v / step)
        ctx.save_for_backward(v, step, q)
        ctx.qmin, ctx.qmax, ctx.grad_scale = qmin, qmax, grad_scale
        return torch.clamp(q, qmin, qmax) * step

    @staticmethod
    def backward(ctx, grad_output):
        v, step, q = ctx.saved_tensors
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)'''

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "ste_mask_before_rounding": Wrong("FakeQuantSTE", "test_ste_backward", "decide it on the rounded value", '''
class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        v = x / scale + zero_point
        ctx.save_for_backward((v >= qmin) & (v <= qmax))
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None
''' + WRAPPER),
    "hard_coded_visible_cases": Wrong("FakeQuantSTE", "test_ste_forward", "A hidden check failed", '''
VISIBLE = {8: [-1.0, -0.5, 0.0, 0.0, 0.0, 1.0, 1.5, 1.5], 5: [0.0, 2.0, 2.0, 2.0, -3.0],
           9: [-2.0, -2.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], 6: [[0.0, 0.25, -0.5], [0.0, 0.5, -1.0]]}


class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        if x.numel() in VISIBLE:
            return torch.tensor(VISIBLE[x.numel()])
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None
''' + WRAPPER),
    "lsq_without_grad_scale": Wrong("LSQFakeQuant", "test_lsq_backward", "the gradient scale is missing",
                                    LSQ_UP_TO_THE_STEP_GRADIENT + '''
        d = torch.where(inside, q - v / step, torch.where(below, float(ctx.qmin), float(ctx.qmax)))
        return grad_output * inside, (grad_output * d).sum().reshape(step.shape), None, None, None
'''),
    "quantized_forward_per_tensor_weights": Wrong("quantized_forward", "test_quantized_forward",
                                                  "one scale per output channel", '''
def quantized_forward(model, images, bits, input_max):
    qmax_w, qmax_x = 2 ** (bits - 1) - 1, 2 ** bits - 1

    def weight(layer):
        w = layer.weight
        return fake_quant_ste(w, w.detach().abs().max() / qmax_w, 0, -qmax_w - 1, qmax_w)

    def inputs(x, name):
        return fake_quant_ste(x, input_max[name] / qmax_x, 0, 0, qmax_x)

    x = F.relu(F.conv2d(inputs(images, "conv1"), weight(model.conv1), model.conv1.bias, padding=1))
    x = F.relu(F.conv2d(inputs(x, "conv2"), weight(model.conv2), model.conv2.bias, padding=1))
    x = F.max_pool2d(x, 2).flatten(1)
    x = F.relu(F.linear(inputs(x, "fc1"), weight(model.fc1), model.fc1.bias))
    return F.linear(inputs(x, "fc2"), weight(model.fc2), model.fc2.bias)
'''),
    "finetune_without_quantizer": Wrong("qat_finetune", "test_qat_finetune", "it should reach 0.90", '''
def qat_finetune(model, train_set, bits, input_max, epochs, lr, seed):
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(len(train_set), generator=gen)
        for start in range(0, len(train_set), 64):
            idx = order[start:start + 64]
            loss = F.cross_entropy(model(train_set.images[idx]), train_set.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}")
    return model
'''),
    "lsq_step_gradient_rounding_held_fixed": Wrong("LSQFakeQuant", "test_lsq_backward",
                                                   "you held round(v / step) constant",
                                                   LSQ_UP_TO_THE_STEP_GRADIENT + '''
        d = torch.where(inside, q, torch.where(below, float(ctx.qmin), float(ctx.qmax)))
        grad_step = (grad_output * d).sum() * ctx.grad_scale
        return grad_output * inside, grad_step.reshape(step.shape), None, None, None
'''),
    "pact_alpha_from_every_value": Wrong("pact_alpha_gradient", "test_pact_alpha_gradient", "PACT's paper drops",
                                         'pact_alpha_gradient = "a"\n'),
    "zero_share_per_tensor": Wrong("zero_share_minmax", "test_zero_share_minmax",
                                   "one min-max scale for the whole tensor", '''
w_fc1 = model.fc1.weight.detach()
zero_share_minmax = (torch.round(w_fc1 / w_fc1.abs().max()) == 0).double().mean().item()
'''),
    "zero_share_as_percent": Wrong("zero_share_initial", "test_zero_share_initial", "not a percentage",
                                   "zero_share_initial = 100 * (torch.round(w / init_step) == 0).double().mean().item()\n"),
    "zero_share_learned_step": Wrong("zero_share_initial", "test_zero_share_initial", "the step the experiment learned",
                                     "zero_share_initial = (torch.round(w / step.detach()) == 0).double().mean().item()\n",
                                     alone=True),  # step: what the experiment learns with the student's LSQ
    "design_over_budget": Wrong("design", "test_design", "over the budget of 72", f"design = {DESIGN % 4}\n"),
    "design_diverges": Wrong("design", "test_design", "training diverged",
                             f"design = {DESIGN.replace('0.03', '1.0') % 3}\n"),
}

# --- correct answers written differently: full marks ---------------------------------------------------

DIFFERENT = {
    "FakeQuantSTE": '''
class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        scale = torch.as_tensor(scale, dtype=x.dtype)
        q_r = torch.round(x * (1.0 / scale)) + zero_point
        ctx.save_for_backward(q_r)
        ctx.bounds = (qmin, qmax)
        return (q_r.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_output):
        (q_r,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        keep = torch.logical_and(q_r >= lo, q_r <= hi)
        return torch.where(keep, grad_output, torch.zeros_like(grad_output)), None, None, None, None
''' + WRAPPER,
    "LSQFakeQuant": '''
class LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, step, qmin, qmax, grad_scale):
        q = torch.round(v / step)
        v_hat = q.clamp(qmin, qmax) * step
        ctx.save_for_backward(v, step, q, v_hat)
        ctx.args = (qmin, qmax, grad_scale)
        return v_hat

    @staticmethod
    def backward(ctx, grad_output):
        v, step, q, v_hat = ctx.saved_tensors
        qmin, qmax, g = ctx.args
        inside = (q >= qmin) & (q <= qmax)
        d = torch.full_like(v, float(qmax))
        d[q < qmin] = float(qmin)
        d[inside] = ((v_hat - v) / step)[inside]      # = q - v / step inside the range
        grad_step = g * torch.dot(grad_output.flatten(), d.flatten())
        return grad_output * inside.to(grad_output.dtype), grad_step.reshape(step.shape), None, None, None
''',
    "quantized_forward": '''
def quantized_forward(model, images, bits, input_max):
    x = images
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(model, name)
        w = layer.weight
        flat = w.detach().reshape(w.shape[0], -1)
        w_scale = (flat.abs().max(dim=1).values / (2 ** (bits - 1) - 1)).reshape([-1] + [1] * (w.dim() - 1))
        w_hat = fake_quant_ste(w, w_scale, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        x_hat = fake_quant_ste(x, torch.tensor(input_max[name]) / (2 ** bits - 1), 0, 0, 2 ** bits - 1)
        if name.startswith("conv"):
            x = torch.relu(layer._conv_forward(x_hat, w_hat, layer.bias))
            if name == "conv2":
                x = F.max_pool2d(x, kernel_size=2).reshape(len(x), -1)
        else:
            x = x_hat @ w_hat.t() + layer.bias
            if name == "fc1":
                x = torch.clamp(x, min=0)
    return x
''',
    "qat_finetune": '''
def qat_finetune(model, train_set, bits, input_max, epochs, lr, seed):
    trained = copy.deepcopy(model)
    gen = torch.Generator()
    gen.manual_seed(seed)
    opt = torch.optim.Adam(trained.parameters(), lr=lr)
    for epoch in range(epochs):
        losses = []
        for idx in torch.split(torch.randperm(len(train_set.labels), generator=gen), 64):
            log_p = F.log_softmax(quantized_forward(trained, train_set.images[idx], bits, input_max), dim=1)
            loss = F.nll_loss(log_p, train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print("epoch", epoch + 1, "loss", sum(losses) / len(losses))
    return trained
''',
    "pact_alpha_gradient": 'pact_alpha_gradient = " (B) "\n',
    "zero_share_minmax": '''
import numpy
w_np = model.fc1.weight.detach().numpy()
zero_share_minmax = numpy.float64((numpy.abs(w_np) <= numpy.abs(w_np).max(axis=1, keepdims=True) / 2).mean())
''',
    "zero_share_initial": "zero_share_initial = (torch.round(w / (2 * w.abs().mean())) == 0).float().mean()\n",  # a tensor
    "design": 'design = dict(method="lsq", granularity="tensor", optimizer="adam", lr=3e-3, epochs=3, batch_size=64)\n',
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_obfuscated": Cheat({"qat_finetune": """
training = __import__("ql" + "ib.qat_training", fromlist=["train_qat"])


def qat_finetune(model, train_set, bits, input_max, epochs, lr, seed):
    return copy.deepcopy(model)
"""}, "test_qat_finetune"),
}


# --- designs that fall short of the target: the tier they reach ---------------------------------------

STE = '{"method": "ste", "granularity": "channel", "optimizer": "adam", "lr": %s, "epochs": 3, "batch_size": 64}'
PARTIAL = {
    "design_ste_tuned": Partial({"design": f"design = {STE % '3e-3'}\n"}, "test_design", 3),  # mean 0.939
    "design_ste_defaults": Partial({"design": f"design = {STE % '1e-3'}\n"}, "test_design", 2),  # mean 0.911
}

CHEATS |= design_cheats("design", "test_design", {"method": "lsq", "granularity": "tensor", "optimizer": "sgd",
                                                 "lr": 0.03, "epochs": 3, "batch_size": 64},
                        "must be one of 16, 32, 64, 128")


class TestLab07Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 10, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, DIFFERENT, "hard_coded_visible_cases"
    CHEAT_TARGET = Target("quantized_forward", "test_quantized_forward",
                          "qlib.grading.lab07.reference_quantized_forward")
    CHOICE = Choice("pact_alpha_gradient", "test_pact_alpha_gradient", "pact_alpha_gradient")
    PARTIAL = PARTIAL
    CHEATS = CHEATS
    ANSWER_LINES = ("ctx.save_for_backward((q >= qmin)", "optimizer.step()",
                    "d = torch.where(inside, q - v / step", 'pact_alpha_gradient = "b"',
                    '"method": "lsq", "granularity": "tensor", "optimizer": "sgd", "lr": 0.03',
                    "**Rubric (3 points).** 1 point: the numbers")
    CELL_SECONDS = 10  # the slowest cells of a correct submission (the experiment, the fine-tuning check) take 1.4 s
