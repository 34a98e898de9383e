"""The reference's outputs pinned: `python -m parity_tests.reference_golden --write` records them.

torch_reference equals the tutorial's original code bit for bit (checked outside this repository).
Before it is moved or reshaped, this pins what it computes under a fixed torch seed: every
optimizer step's loss over a few epochs, the trained parameters, their EMA, and a sampled chain.
`tests`' check (parity_tests/test_reference_golden.py) reruns the same program and compares.

The program touches every part of the tutorial: make_beta_schedule's sigmoid and the derived arrays,
ConditionalModel's init (torch's generator), antithetic t and noise from torch's generator inside
noise_estimation_loss, Adam with clip_grad_norm_, the EMA, the epoch's randperm with its short last
batch, and p_sample_loop's noise at every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ddpm_harness.cpu_isa import vector_isa
from torch_reference.model import ConditionalModel
from torch_reference.sampling import p_sample_loop
from torch_reference.schedule import make_schedule
from torch_reference.training import train

GOLDEN = Path(__file__).with_name("reference_golden.json")
SEED, N_POINTS, EPOCHS, BATCH, N_CHAIN = 1234, 200, 3, 64, 32  # 200 = 3 * 64 + 8: a short last batch


def digest(arrays) -> str:
    """sha256 of the arrays' float32 bytes, in order: equal digests mean equal bits."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def reference_outputs() -> dict:
    """Train and sample with torch_reference under torch.manual_seed(SEED); the outputs as plain lists."""
    torch.manual_seed(SEED)
    # The data: a fixed numpy draw (scikit-learn is not what is pinned here).
    data = np.random.default_rng(SEED).normal(size=(N_POINTS, 2)).astype(np.float32)
    dataset = torch.tensor(data)
    schedule = make_schedule("sigmoid", 100, 1e-5, 0.5e-2)
    model = ConditionalModel(100)
    losses = []
    model, ema, _ = train(
        model, dataset, schedule, 100, epochs=EPOCHS, batch_size=BATCH, on_epoch=lambda e, ls, s: losses.extend(ls)
    )
    params = [p.detach().numpy() for _, p in model.named_parameters()]
    shadow = [ema.shadow[name].numpy() for name, _ in model.named_parameters()]
    with torch.no_grad():
        chain = p_sample_loop(
            model, (N_CHAIN, 2), 100, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt
        )
    chain = np.stack([x.numpy() for x in chain])
    return dict(
        losses=[float(x) for x in losses],
        params_sha256=digest(params),
        params_sums=[float(np.sum(p, dtype=np.float64)) for p in params],
        ema_sha256=digest(shadow),
        ema_sums=[float(np.sum(s, dtype=np.float64)) for s in shadow],
        chain_sha256=digest(chain),
        chain_last=chain[-1, :4].tolist(),
        chain_sum=float(np.sum(chain, dtype=np.float64)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.name} instead of printing")
    args = parser.parse_args()
    outputs = dict(torch=torch.__version__, isa=vector_isa(), **reference_outputs())
    text = json.dumps(outputs, indent=1)
    if args.write:
        GOLDEN.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
