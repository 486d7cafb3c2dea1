"""Does FLA 0.6's causal_conv1d itself fault on a strided x (a column slice) with cu_seqlens? fwd+bwd."""
import torch
from fla.modules.causal_conv1d import causal_conv1d

torch.manual_seed(0)
T, D, W = 4096, 2048 + 16, 4
cu = torch.tensor([0, 100, 1000, 1001, 3000, 4096], device="cuda", dtype=torch.int32)
wide = torch.randn(1, T, D + 40, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(D, W, device="cuda", dtype=torch.bfloat16, requires_grad=True)
for name, x in (("dense", wide[..., :D].contiguous()), ("strided", wide[..., 7:7 + D])):
    y, _ = causal_conv1d(x=x, weight=w, activation="silu", cu_seqlens=cu, cu_seqlens_cpu=cu.cpu().long())
    y.float().square().sum().backward()
    torch.cuda.synchronize()
    print(name, "ok", float(y.float().abs().mean()), float(wide.grad.float().abs().sum()), flush=True)
    wide.grad = None
