"""``imgcls demo``: the main job on an embedded dataset.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI optdigits): no download. The demo tours
the architecture registry, shows a per-layer table, and illustrates likelihood and cross-entropy
on the digits with a model's untrained predictions.
"""

from __future__ import annotations

from pathlib import Path


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def run_demo(out: str | Path = "demo-run") -> Path:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from imgcls import probability as P
    from imgcls.models import create_model, summarize_arch
    from imgcls.models.catalog import catalog

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    _section("1. The architecture registry (imgcls models)")
    for row in catalog():
        print(
            f"  {row.name:18s} {row.family:13s} {row.params / 1e6:8.2f}M params "
            f"{row.macs / 1e9:8.2f}G MACs at {row.input_size[1]}x{row.input_size[2]}"
        )

    _section("2. LeNet, layer by layer (imgcls summary lenet --num-classes 10)")
    print(summarize_arch("lenet", num_classes=10).table())

    _section("3. Likelihood and cross-entropy on real handwritten digits")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # 8x8, values 0..16
    labels = torch.tensor(digits.target)
    x = images[:, None].expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10).eval()
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)
    probs = P.softmax(logits)
    p_true = float(probs[torch.arange(len(labels)), labels].mean())
    product = float(P.likelihood(labels, probs))
    print(f"  {len(labels)} digits, 10 classes; an untrained LeNet gives each class about 1/10:")
    print(f"  mean probability of the true class: {p_true:.4f}")
    print(f"  likelihood of all labels (product):  {product:.3g}  (underflows)")
    ll = float(P.log_likelihood(labels, probs))
    print(f"  log-likelihood (sum of logs):        {ll:.1f}")
    print(
        f"  mean NLL = cross-entropy:            {float(P.nll_from_logits(labels, logits)):.4f}"
        f"  (log 10 = {np.log(10):.4f} for a uniform guess)"
    )
    return out_dir
