"""The `precision` key: bf16 autocast gives a meta-gradient within bfloat16's rounding of
float32's, fp32 and tf32 decide CUDA's matmul and convolution arithmetic (float32 or
TensorFloat-32), and unknown values are refused."""
import pytest
import torch

from fewshot import algorithms, precision
from fewshot.config import load_preset, apply_overrides, validate
from fewshot.data.episodes import Task
from fewshot.errors import FewshotError

from helpers import tiny_config

CPU = torch.device("cpu")
# bfloat16 keeps 8 significant bits (7 stored + the implicit one): rounding a value to
# bfloat16 changes it by at most this relative amount.
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def sinusoid_maml(first_order, seed):
    torch.manual_seed(seed)
    config = apply_overrides(load_preset("sinusoid-10shot"), {"first_order": first_order, "meta_batch": 1})
    return algorithms.build(config)


def sinusoid_task(seed):
    generator = torch.Generator().manual_seed(seed)
    amplitude, phase = 0.1 + 4.9 * torch.rand(1, generator=generator), 3.1 * torch.rand(1, generator=generator)
    support_x, query_x = (10 * torch.rand(10, 1, generator=generator) - 5 for _ in range(2))
    return Task(support_x, amplitude * torch.sin(support_x - phase), query_x, amplitude * torch.sin(query_x - phase))


def conv4_tasks(count=2, ways=3, shots=2, query=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(ways * shots, 1, size, size, generator=generator),
                 torch.arange(ways).repeat_interleave(shots),
                 torch.rand(ways * query, 1, size, size, generator=generator),
                 torch.arange(ways).repeat_interleave(query)) for _ in range(count)]


def meta_gradient(algorithm, tasks, value=None):
    """The flat meta-gradient of one step, run under precision.autocast(value) (or
    no context at all when value is None)."""
    algorithm.zero_grad(set_to_none=True)
    if value is None:
        algorithm.meta_gradient(tasks)
    else:
        with precision.autocast(value, CPU):
            algorithm.meta_gradient(tasks)
    return torch.cat([p.grad.flatten() for p in algorithm.parameters()])


@pytest.mark.parametrize("first_order", [False, True])
def test_bf16_meta_gradient_is_within_bfloat16_rounding_of_fp32s(first_order):
    """Tolerance: under autocast, each of the MLP's 3 linear layers rounds its input,
    its weight and its output to bfloat16 (3 roundings of relative size <= u = 2^-8).
    A meta-gradient entry is reached through the support forward, the support
    backward, the query forward and the query backward (4 passes), and in second
    order also the two passes of the double backward through the support backward
    (6 passes): at most R = 3 layers x 3 roundings x passes = 36 (first order) or 54
    (second order) roundings in a row. To first order their relative errors add,
    so the meta-gradient's relative error (in norm) is at most R * u: 0.14 or 0.21.
    Single tasks, so no cancellation between tasks' gradients inflates it."""
    passes = 4 if first_order else 6
    tolerance = 3 * 3 * passes * BF16_UNIT_ROUNDOFF
    for seed in range(4):
        algorithm = sinusoid_maml(first_order, seed)
        tasks = [sinusoid_task(seed)]
        fp32 = meta_gradient(algorithm, tasks, "fp32")
        bf16 = meta_gradient(algorithm, tasks, "bf16")
        assert bf16.dtype == torch.float32  # the parameters' gradients stay float32
        relative_error = ((bf16 - fp32).norm() / fp32.norm()).item()
        assert 0 < relative_error <= tolerance, (seed, relative_error / BF16_UNIT_ROUNDOFF)


def test_bf16_autocast_runs_the_forward_in_bfloat16_on_the_cpu():
    torch.manual_seed(0)
    algorithm = algorithms.build(tiny_config())
    x = conv4_tasks(1)[0].support_x
    with precision.autocast("bf16", CPU):
        out = algorithm.model.functional_forward(dict(algorithm.model.named_parameters()), x)
    assert out.dtype == torch.bfloat16
    with precision.autocast("fp32", CPU):
        assert algorithm.model.functional_forward(dict(algorithm.model.named_parameters()), x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_fp32_computes_in_float32_and_tf32_in_tensorfloat32_on_cuda():
    """configure() decides the arithmetic of CUDA matmuls and convolutions. Under fp32 and bf16
    (outside autocast) a float32 product is within float32 rounding of the float64 one, even
    from PyTorch's default, which leaves cuDNN's TF32 on; under tf32 the inputs are rounded to
    TensorFloat-32's 10-bit mantissa, errors a thousand times larger. (On the CPU there is no
    TF32: the key changes nothing there, so no CPU test could tell fp32 from tf32.)"""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cuda = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(512, 512, generator=generator, dtype=torch.float64) for _ in range(2))
    x = torch.randn(8, 64, 16, 16, generator=generator, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, generator=generator, dtype=torch.float64)
    exact = (a @ b, torch.nn.functional.conv2d(x, w, padding=1))

    def relative_errors():
        got = ((a.float().to(cuda) @ b.float().to(cuda)),
               torch.nn.functional.conv2d(x.float().to(cuda), w.float().to(cuda), padding=1))
        return [((g.double().cpu() - e).abs().max() / e.abs().max()).item() for g, e in zip(got, exact)]

    try:
        for value in ("fp32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            precision.configure(value, cuda)
            assert max(relative_errors()) < 1e-5, value
        precision.configure("tf32", cuda)
        assert min(relative_errors()) > 1e-4
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_an_unknown_precision_is_refused_in_one_line():
    config = tiny_config(precision="fp16")
    with pytest.raises(FewshotError, match=r"precision must be one of fp32, tf32, bf16, got 'fp16'"):
        validate(config)
    for function in (precision.configure, precision.autocast):
        with pytest.raises(FewshotError, match="precision must be one of"):
            function("fp16", CPU)
    validate(tiny_config(precision="bf16"))  # the known values pass


@pytest.mark.parametrize("value,inside", [("tf32", (True, True)), ("fp32", (False, False)), ("bf16", (False, False))])
def test_configured_sets_the_flags_for_a_block_and_puts_the_callers_back(value, inside):
    """What eval, predict and embed run in: a library call leaves a Python caller's flags as
    they were, also when the block fails."""
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    saved = flags()
    try:
        for before in ((True, False), (False, True)):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
            with precision.configured(value, torch.device("cuda")):
                assert flags() == inside and not torch.is_autocast_enabled("cpu")
            assert flags() == before
            with pytest.raises(KeyboardInterrupt):
                with precision.configured(value, torch.device("cuda")):
                    raise KeyboardInterrupt
            assert flags() == before
            with precision.configured(value, CPU):  # the CPU has no TF32: nothing is set
                assert flags() == before
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
