"""Long-tail benchmark: every method of ``defectlab.imbalance`` on the same frozen features, 3 seeds.

Backbone and budget, identical for every method: frozen ImageNet mobilenet_v2 features (see
``longtail_data.py``), a trainable head ``Linear(1280,256)-BN-ReLU-Dropout(0.2)-Linear(256,C)``, Adam
(lr 1e-3, weight decay 5e-4), batch 64, ``EPOCHS`` epochs of ``len(train)`` draws each (the same number of
gradient steps for every method, oversampled ones included). Each draw takes one of the image's cached
views (clean or one of the augmented ones) at random; BCL takes two different views of the same image.
Evaluation on the clean features of the test split. Oversampling:
``smote``: imbalanced-learn SMOTE on the pooled train features (all views), every class up to the largest;
``deepsmote``: DeepSMOTE trained on the train images (64 px grayscale), minority classes topped up to
``min(largest, DEEPSMOTE_CAP)`` decoded images, which then go through the same frozen backbone.

    python bench/longtail_bench.py neu            # -> bench/results/longtail_neu.json, longtail_neu_recall.png
    python bench/longtail_bench.py magnetic_tile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longtail_data as D  # noqa: E402

from defectlab.config import write_json  # noqa: E402
from defectlab.imbalance import DeepSMOTE, build_method, build_sampler, smote_features  # noqa: E402
from defectlab.metrics.classification import classification_metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = 60
BATCH = 64
DEEPSMOTE_CAP = 100

# name -> (method, method_params, loss, loss_params, sampler, oversample)
SPECS: dict[str, dict] = {
    "ce": {},
    "weighted_ce": {"loss": "weighted_ce"},
    "focal": {"loss": "focal", "loss_params": {"gamma": 2.0}},
    "cb": {"loss": "cb", "loss_params": {"beta": 0.999}},
    "balanced_softmax": {"loss": "balanced_softmax"},
    "logit_adjusted": {"loss": "logit_adjusted", "loss_params": {"tau": 1.0}},
    "posthoc_la": {"method_params": {"posthoc_tau": 1.0}},
    "class_balanced_sampler": {"sampler": "class_balanced"},
    "sqrt_sampler": {"sampler": "sqrt"},
    "bcl": {"method": "bcl"},
    "group_softmax": {"method": "group_softmax", "method_params": {"seed": 0}},  # own generator for "others"
    "smote": {"oversample": "smote"},
    "deepsmote": {"oversample": "deepsmote"},
}


def head(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1280, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(256, num_classes))


def deepsmote_features(feats: dict, train_idx: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """DeepSMOTE on 64 px grayscale train images; decoded images -> frozen backbone features."""
    from defectlab.backbones import build_backbone
    from defectlab.classify.data import BatchAugment, decode_resized

    paths = [feats["paths"][i] for i in train_idx]
    labels = feats["labels"][train_idx]
    gray = torch.stack([decode_resized(p, 64)[0] for p in paths]).float().div(255).unsqueeze(1)
    counts = torch.bincount(labels).tolist()
    target = {c: max(n, min(max(counts), DEEPSMOTE_CAP)) for c, n in enumerate(counts)}
    ds = DeepSMOTE(latent_dim=64, width=16, epochs=40, batch_size=32, seed=seed)
    ds.fit(gray, labels)
    new_x, new_y = ds.sample(target)
    bb = build_backbone("mobilenet_v2", weights="imagenet")
    norm = BatchAugment("none", D.SIZE, bb.info.mean, bb.info.std)
    out = []
    with torch.inference_mode():
        for b in new_x.split(32):
            img = torch.nn.functional.interpolate(b, size=(D.SIZE, D.SIZE), mode="bilinear", align_corners=False)
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
            out.append(D._features(bb.model.eval(), norm(img, train=False)))
    return (torch.cat(out) if out else torch.zeros(0, 1280)), new_y, ds.history_


def train_one(name: str, spec: dict, views: torch.Tensor, labels: torch.Tensor, test_x: torch.Tensor,
              num_classes: int, counts: list[int], seed: int) -> tuple[np.ndarray, float]:
    """views: (N, V, 1280) train features, labels (N,). Returns test predictions and seconds."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    method = build_method(spec.get("method", "plain"), spec.get("method_params"), loss=spec.get("loss", "ce"),
                          loss_params=spec.get("loss_params"))
    model = method.wrap_model(head(num_classes), num_classes, counts)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    n_draws = int(spec.get("draws", len(labels)))
    nv = views.shape[1]
    for _ in range(EPOCHS):
        model.train()
        order = torch.as_tensor(list(iter(build_sampler(spec.get("sampler", "instance"), labels.tolist(),
                                                        {"num_samples": n_draws}))))
        for s in range(0, len(order), BATCH):
            idx = order[s:s + BATCH]
            if len(idx) < 2:
                continue
            if method.views == 2:
                a = torch.randint(nv, (len(idx),))
                b = (a + torch.randint(1, nv, (len(idx),))) % nv
                x = torch.stack([views[idx, a], views[idx, b]], 1)
            else:
                x = views[idx, torch.randint(nv, (len(idx),))]
            loss = method.loss(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = method.predict_logits(model(test_x)).argmax(1).numpy()
    return pred, time.perf_counter() - t0


def run_seed(dataset: str, feats: dict, seed: int, methods: list[str]) -> dict:
    rows = D.split_rows(dataset, seed)
    pos = {p: i for i, p in enumerate(feats["paths"])}
    classes = feats["classes"]
    train_idx = np.array([pos[str(r.path)] for r in rows if r.split == "train"])
    test_idx = np.array([pos[str(r.path)] for r in rows if r.split == "test"])
    labels = feats["labels"][train_idx]
    views = torch.cat([feats["clean"][train_idx, None], feats["aug"][train_idx]], 1)  # (N, 1 + A, 1280)
    assert not torch.isnan(views).any()
    test_x, test_y = feats["clean"][test_idx], feats["labels"][test_idx].numpy()
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    out: dict = {"train_counts": dict(zip(classes, counts, strict=True)),
                 "test_counts": dict(zip(classes, np.bincount(test_y, minlength=len(classes)).tolist(), strict=True)),
                 "methods": {}}
    for name in methods:
        spec = dict(SPECS[name])
        v, y, extra = views, labels, {}
        if spec.get("oversample") == "smote":
            nv = views.shape[1]
            pooled_x, pooled_y = smote_features(views.reshape(-1, 1280), labels.repeat_interleave(nv), "max", k=5,
                                                seed=seed)
            v, y = pooled_x[:, None], pooled_y
            spec["draws"] = len(labels)
            extra["synthetic"] = int(len(pooled_y) - len(labels) * nv)
        elif spec.get("oversample") == "deepsmote":
            t0 = time.perf_counter()
            syn_x, syn_y, hist = deepsmote_features(feats, train_idx, seed)
            v = torch.cat([views, syn_x[:, None].expand(-1, views.shape[1], -1)])
            y = torch.cat([labels, syn_y])
            spec["draws"] = len(labels)
            extra.update(synthetic=int(len(syn_y)), deepsmote_seconds=time.perf_counter() - t0,
                         deepsmote_loss_first_last=[hist[0], hist[-1]])
        pred, secs = train_one(name, spec, v, y, test_x, len(classes), counts, seed)
        m = classification_metrics(test_y, pred, labels=list(range(len(classes))), train_counts=counts)
        recall = {classes[int(c)]: m["per_class"][c]["recall"] for c in m["per_class"]}
        out["methods"][name] = {"balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
                                "accuracy": m["accuracy"], "shot_accuracy": m["shot_accuracy"],
                                "per_class_recall": recall,
                                "never_predicted": [classes[c] for c in m["never_predicted"]],
                                "seconds": secs, **extra}
        print(f"  seed {seed} {name:24s} BA {m['balanced_accuracy']:.3f} F1 {m['macro_f1']:.3f} "
              f"shots {m['shot_accuracy']} ({secs:.1f}s)", flush=True)
    return out


def summarise(per_seed: list[dict], methods: list[str], classes: list[str]) -> dict:
    def stat(vals: list[float | None]) -> dict | None:
        vals = [v for v in vals if v is not None]
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals else None

    out = {}
    for name in methods:
        runs = [s["methods"][name] for s in per_seed]
        out[name] = {
            "balanced_accuracy": stat([r["balanced_accuracy"] for r in runs]),
            "macro_f1": stat([r["macro_f1"] for r in runs]),
            "accuracy": stat([r["accuracy"] for r in runs]),
            "shot_accuracy": {g: stat([r["shot_accuracy"][g] for r in runs]) for g in ("many", "medium", "few")},
            "per_class_recall": {c: stat([r["per_class_recall"][c] for r in runs]) for c in classes},
            "seconds": stat([r["seconds"] for r in runs]),
        }
    return out


def plot(summary: dict, train_counts: dict[str, int], path: Path, title: str) -> None:
    best = max(summary, key=lambda n: summary[n]["balanced_accuracy"]["mean"])
    classes = sorted(train_counts, key=lambda c: -train_counts[c])
    x = [train_counts[c] for c in classes]
    fig, ax = plt.subplots(figsize=(9, 5))
    cmap = plt.get_cmap("tab20")
    for i, (name, s) in enumerate(summary.items()):
        y = [s["per_class_recall"][c]["mean"] for c in classes]
        lw, ls = (2.5, "-") if name in ("ce", best) else (1.0, "-" if i < 10 else "--")
        color = "black" if name == "ce" else "crimson" if name == best else cmap(i)
        label = f"{name} (best)" if name == best else name
        ax.plot(x, y, marker="o", lw=lw, ls=ls, color=color, label=label, alpha=0.9)
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c}\n({n})" for c, n in zip(classes, x, strict=True)], fontsize=7)
    ax.set_xlabel("class (training images, log scale)")
    ax.set_ylabel("test recall (mean of 3 seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="long-tail benchmark on cached frozen features")
    ap.add_argument("dataset", choices=["neu", "magnetic_tile"])
    ap.add_argument("--methods", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(D.SEEDS))
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the saved JSON")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.replot:
        saved = json.loads((RESULTS / f"longtail_{args.dataset}.json").read_text())
        plot(saved["summary"], saved["train_counts"], RESULTS / f"longtail_{args.dataset}_recall.png",
             f"{args.dataset}: per-class recall vs training class size")
        return 0
    torch.set_num_threads(1)  # a small head: one thread; two are ~20x slower on the shared, loaded CPU
    t0 = time.perf_counter()
    feats = D.load_features(args.dataset)
    classes = feats["classes"]
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(args.dataset, feats, seed, args.methods))
    summary = summarise(per_seed, args.methods, classes)
    base = summary["ce"]["balanced_accuracy"]["mean"] if "ce" in summary else None
    best = max(summary, key=lambda n: summary[n]["balanced_accuracy"]["mean"])
    out_dir = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python bench/longtail_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset, "classes": classes, "seeds": args.seeds,
        "split": {k: v for k, v in vars(D.split_config(args.dataset, 0)).items() if k != "seed"},
        "backbone": f"mobilenet_v2 frozen, {feats['weights']}, {feats['size']} px, {D.AUG_VIEWS} augmented views",
        "head": "Linear(1280,256)-BN-ReLU-Dropout(0.2)-Linear(256,C)", "epochs": EPOCHS, "batch": BATCH,
        "train_counts": per_seed[0]["train_counts"], "test_counts": per_seed[0]["test_counts"],
        "shot_thresholds": "many > 100 train images, few < 20, medium otherwise",
        "summary": summary, "best_method": best,
        "best_gain_over_ce_points": None if base is None else 100 * (summary[best]["balanced_accuracy"]["mean"] - base),
        "per_seed": per_seed, "seconds_total": time.perf_counter() - t0, "loadavg": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
    }
    write_json(out_dir / f"longtail_{args.dataset}.json", result)
    title = f"{args.dataset}: per-class recall vs training class size"
    plot(summary, per_seed[0]["train_counts"], out_dir / f"longtail_{args.dataset}_recall.png", title)
    print(f"best {best}: BA {summary[best]['balanced_accuracy']['mean']:.3f}; "
          f"gain over ce {result['best_gain_over_ce_points']:.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
