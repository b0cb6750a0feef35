"""A small driver for Nsight Compute: one forward and one backward at a network shape."""

import sys

import torch

from rubiks_shift import rubiks_shift3d

shape = tuple(int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "8,8,72,56,56").split(","))
stride = tuple(int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "1,1,1").split(","))
x = torch.randn(shape, device="cuda", requires_grad=True)
shift = torch.nn.Parameter(torch.rand(3, shape[2], device="cuda") * 4 - 2)
for _ in range(2):
    y = rubiks_shift3d(x, shift, stride)
    y.backward(torch.randn_like(y))
torch.cuda.synchronize()
