"""A small driver for Nsight Compute: forward and backward twice at a network shape.

python ncu_target.py [shape, e.g. 8,8,72,56,56] [stride, e.g. 1,1,1] [dtype]
"""

import sys

import torch

from rubiks_shift import rubiks_shift3d

shape = tuple(int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "8,8,72,56,56").split(","))
stride = tuple(int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "1,1,1").split(","))
dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float32")
x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
shift = torch.nn.Parameter(torch.rand(3, shape[2], device="cuda") * 4 - 2)
for _ in range(2):
    y = rubiks_shift3d(x, shift, stride)
    y.backward(torch.randn_like(y))
torch.cuda.synchronize()
