"""Run by test_kernel_cache_gpu.py in a fresh process: forward and backward on the GPU
through every kernel of the float32 set, results saved with torch.save to argv[1]; prints
one JSON line: kernel sets Numba built (compiled) here, whether numba.cuda was imported,
and the rubiks_shift log messages."""

import json
import logging
import sys

import torch

from rubiks_shift import _cuda_launch, rubiks_shift3d

messages = []


class _Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


logger = logging.getLogger("rubiks_shift")
logger.addHandler(_Collect())
logger.setLevel(logging.DEBUG)
g = torch.Generator().manual_seed(0)
results = []
# the frame walk (stride 1), the row walk (stride 2) and the one-column gather (W = 1);
# every backward also runs the shift gradient and its finalize
for shape, stride in (((2, 4, 6, 9, 7), (1, 1, 1)), ((2, 4, 6, 9, 7), (1, 2, 2)),
                      ((2, 4, 6, 9, 1), (1, 1, 1))):  # fmt: skip
    x = torch.randn(shape, generator=g).cuda().requires_grad_()
    shift = (torch.rand(3, shape[2], generator=g) * 4 - 2).cuda().requires_grad_()
    y = rubiks_shift3d(x, shift, stride)
    y.backward(torch.randn(y.shape, generator=g).cuda())
    results += [y.detach().cpu(), x.grad.cpu(), shift.grad.cpu()]
torch.save(results, sys.argv[1])
built = sorted(
    f"{k[0]}/{k[1]}" for k, s in _cuda_launch._kernel_sets.items() if s._built is not None
)
loaded = sorted(k[2] for k in _cuda_launch._Launcher.loaded)
report = {"built": built, "loaded": loaded, "numba_cuda": "numba.cuda" in sys.modules}
print(json.dumps(dict(report, messages=messages)))
