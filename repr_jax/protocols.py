"""Protocol presets: every setting of the RePr paper's and of the official code's runs at once.

``--protocol paper`` follows the paper (Prakash et al. 2019) and the first author's thesis
(iamaaditya/Thesis, ``chapters/repr.tex``); ``--protocol official`` follows the official
code (iamaaditya/repr-ortho at its stored snapshot: ``train.py``, ``model.py``,
``ranking.py``, ``ortho.py``); ``--protocol reimpl`` follows the public PyTorch
reimplementation that reports a gain, siahuat0727/RePr at 88a976f (2019-05-21: ``main.py``,
``models/vanilla.py``, ``utils.py``, and its README's run "without data augmentation,
learning rate = 0.003": Standard 64.86 → RePr 69.05 %, best epoch). Each entry is
``(setting key, value, source)``; the source says where the value comes from, or that the
code is silent and which value we chose.

A preset is applied before ``--method``, the named flags and ``--set``, so anything can be
changed on top of it; RePr's entries (``repr.*``, and ``repr:KEY`` — a run setting that
differs for RePr runs, e.g. ``repr:epochs``) apply only when the method is ``repr``. The
name is recorded as ``protocol`` in ``config.json`` (with every resulting setting).
"""
from __future__ import annotations

OFFICIAL_FULL_EPOCHS = 199   # train.py: for epoch in range(1, args.epochs) with epochs = 200
OFFICIAL_ROUNDS = 9          # epochs 20, 40, …, 180 (epoch % freq == 0, freq = 20)
OFFICIAL_TUNER = 20          # -tuner: sub-network epochs per round

PROTOCOLS: dict[str, tuple[tuple[str, object, str], ...]] = {
    "paper": (
        ("model.name", "convnet", "§4: C³(32), 'a three layer ConvNet with 32 filters each'"),
        ("model.depth", 3, "§4: C^n(X) with n = 3"),
        ("model.width", 32, "§4: X = 32"),
        ("model.variant", "paper", "§4: [CONV(X) → RELU]^n → FC; 3×3 kernels (kernel size not stated: our choice)"),
        ("model.batch_norm", False, "§4: no BatchNorm in C^n(X)"),
        ("data.holdout", 5000, "thesis §4: 'a separate validation set of 5K images … to compute the Oracle ranking'"),
        ("data.augment", False, "official README: 'There is no augmentation' (the paper is silent)"),
        ("optim.optimizer", "sgd", "§4: 'trained with SGD with a learning rate of 0.01'"),
        ("optim.learning_rate", 0.01, "§4: 'learning rate of 0.01'"),
        ("optim.momentum", 0.0, "§4: plain SGD (momentum not mentioned)"),
        ("optim.nesterov", False, "§4: plain SGD"),
        ("optim.weight_decay", 0.0, "not mentioned: none"),
        ("optim.schedule", "constant", "§4: fixed learning rate (Fig. 1)"),
        ("optim.warmup_epochs", 0, "not mentioned: none"),
        ("batch_size", 128, "not stated: our choice"),
        ("epochs", 100, "Fig. 1: 'over 100 epochs'"),
        ("repr.s1", 20, "§4: S1 = 20"),
        ("repr.s2", 10, "§4: S2 = 10"),
        ("repr.iterations", 3, "§4: N = 3"),
        ("repr.drop_fraction", 0.3, "§4: p = 30 %"),
        ("repr.per_layer", False, "§5: 'the ranking is computed over all the filters in the network'"),
        ("repr.exclude_first", False, "§5: every conv is ranked"),
        ("repr.min_keep", 1, "not stated: no layer emptied (our choice)"),
        ("repr.criterion", "ortho", "§5, Eq. 3: inter-filter orthogonality O_f"),
        ("repr.reinit", "orthogonal", "§5: re-initialised 'orthogonal to … the remaining filters' and their old values"),
        ("repr.drop_mode", "zero", "Alg. 1: dropped filters are removed from the network"),
        ("repr.rounding", "floor", "official ranking.py: cutoff = int(len · p / 100)"),
        ("repr.outgoing_scale", 1.0, "not mentioned: outgoing weights untouched"),
        ("repr.outgoing", "zero", "not mentioned; Fig. 1 and the thesis (point [E] above [C]) show the accuracy "
                                  "continuous at a re-introduction, which only zeroed outgoing weights give "
                                  "(siahuat0727/RePr --zero_init; kept weights: a 10-21 point drop in our runs)"),
        ("repr.criterion_batches", 39, "the 5K held-out images (39 × 128 = 4992) for data-driven criteria"),
    ),
    "official": (
        ("model.name", "convnet", "model.py: convnet"),
        ("model.depth", 3, "model.py: [32]*3"),
        ("model.width", 32, "model.py: [32]*3"),
        ("model.variant", "official", "model.py: slim.conv2d 5×5 + bias + ReLU, max_pool2d 3×3/2 SAME, "
                                      "truncated_normal(0.04), dense 512→10"),
        ("model.batch_norm", False, "model.py: BN only from layer 7 on"),
        ("data.holdout", 5000, "train.py: X_train, X_val = X[:45000], X[45000:]"),
        ("data.augment", False, "README: 'There is no augmentation'"),
        ("optim.optimizer", "sgd", "train.py: tf.train.GradientDescentOptimizer"),
        ("optim.learning_rate", 0.05, "train.py: -learning_rate 0.05"),
        ("optim.momentum", 0.0, "train.py: plain gradient descent"),
        ("optim.nesterov", False, "train.py: plain gradient descent"),
        ("optim.weight_decay", 0.0, "train.py: no regulariser in the cost"),
        ("optim.schedule", "exponential", "train.py: exponential_decay(0.05, global_step, 25000, 0.5, staircase=True)"),
        ("optim.decay_steps", 25000, "train.py: 25000"),
        ("optim.decay_rate", 0.5, "train.py: 0.50"),
        ("optim.staircase", True, "train.py: staircase=True"),
        ("optim.warmup_epochs", 0, "train.py: none"),
        ("batch_size", 64, "train.py: -batch_size 64; partial batches skipped"),
        ("epochs", OFFICIAL_FULL_EPOCHS + OFFICIAL_ROUNDS * OFFICIAL_TUNER,
         "train.py: 199 full epochs + 9 rounds × 20 extra epochs (Standard trains the same extra epochs)"),
        ("repr.s1", 20, "train.py: -freq 20"),
        ("repr.s2", OFFICIAL_TUNER, "train.py: -tuner 20"),
        ("repr.iterations", OFFICIAL_ROUNDS, "train.py: epochs 20, 40, …, 180"),
        ("repr.drop_fraction", 0.5, "train.py: -rank 50"),
        ("repr.per_layer", False, "ranking.py: 'cutoff is global across the full network'"),
        ("repr.exclude_first", False, "ranking.py: every conv weight is ranked"),
        ("repr.min_keep", 0, "ranking.py: no per-layer floor"),
        ("repr.criterion", "ortho_official", "ranking.py: inter_ortho"),
        ("repr.reinit", "official", "ortho.py: get_ortho_weights(weights, gain)[..., filters]"),
        ("repr.gain", 1.0, "train.py: -gain 1.00"),
        ("repr.drop_mode", "freeze", "model.py/ranking.py: output * yeta (0/1 mask); weights kept"),
        ("repr.rounding", "floor", "ranking.py: int(len(sorted_vars) * p / 100)"),
        ("repr.outgoing_scale", 1.0, "train.py: outgoing weights untouched"),
        ("repr.outgoing", "keep", "train.py: outgoing weights untouched"),
    ),
    "reimpl": (
        ("model.name", "convnet", "main.py: model = Vanilla()"),
        ("model.depth", 3, "models/vanilla.py: conv1, conv2, conv3"),
        ("model.width", 32, "models/vanilla.py: nn.Conv2d(…, 32, kernel_size=3, padding=1)"),
        ("model.variant", "vanilla", "models/vanilla.py (since 800f8e1, 2019-03-16): 3×3 convs with bias, "
                                     "no pooling, fc1 32·32·32 → 10; PyTorch's default init U(±1/√fan_in)"),
        ("model.batch_norm", False, "models/vanilla.py: no BatchNorm"),
        ("data.holdout", 0, "main.py: CIFAR10(train=True), all 50,000 training images"),
        ("data.augment", False, "README: 'Without data augmentation' (main.py's RandomCrop/Flip removed)"),
        ("data.normalization", "pytorch-cifar", "main.py: Normalize((0.4914, 0.4822, 0.4465), "
                                                "(0.2023, 0.1994, 0.2010))"),
        ("optim.optimizer", "sgd", "main.py: torch.optim.SGD(model.parameters(), args.lr)"),
        ("optim.learning_rate", 0.003, "README: 'learning rate = 0.003' (the run without augmentation)"),
        ("optim.momentum", 0.0, "main.py: SGD without momentum"),
        ("optim.nesterov", False, "main.py: plain SGD"),
        ("optim.weight_decay", 0.0, "main.py: no weight decay"),
        ("optim.schedule", "constant", "main.py: no scheduler"),
        ("optim.warmup_epochs", 0, "main.py: none"),
        ("batch_size", 128, "main.py: DataLoader(trainset, batch_size=128, shuffle=True) — its last partial "
                            "batch of 80 is trained on, ours is dropped"),
        ("epochs", 100, "README: Standard `python main.py` (--epochs 100)"),
        ("repr:epochs", 110, "README: `python main.py --repr --S1 20 --S2 10 --epoch 110`"),
        ("repr.s1", 20, "README: --S1 20"),
        ("repr.s2", 10, "README: --S2 10"),
        ("repr.iterations", 3, "main.py: drops at epochs range(S1, 110, S1+S2) = 20, 50, 80"),
        ("repr.drop_fraction", 0.3, "main.py: --prune_ratio 0.3"),
        ("repr.per_layer", False, "main.py: one np.percentile threshold over all the network's filters"),
        ("repr.exclude_first", False, "main.py: every conv weight is ranked"),
        ("repr.min_keep", 0, "main.py: no per-layer floor"),
        ("repr.criterion", "ortho", "main.py: P = |normalize(W) normalize(W)ᵀ − I|, P.sum(dim=1) / F — Eq. 3"),
        ("repr.rounding", "nearest", "main.py: filters above the 70th percentile (linear): 29 of 96, "
                                     "= floor(0.3·96 + 0.5)"),
        ("repr.drop_mode", "kernel", "main.py: W[mask] = 0 and W.grad[mask] = 0 in S2; biases keep training"),
        ("repr.reinit", "reimpl", "main.py: null space of [dropped; W] (utils.qr_null), rows clamped to "
                                  "±1/√fan_in, U(±1/√fan_in) when it runs out; bias kept"),
        ("repr.outgoing", "keep", "main.py without --zero_init: W[:, mask].uniform_() acts on an "
                                  "advanced-indexing copy, so the next layer's weights are kept"),
        ("repr.criterion_batches", 4, "not used: ortho needs no data"),
    ),
}


def protocol_overrides(name: str, method: str) -> list[str]:
    """``KEY=VALUE`` strings of protocol ``name`` for a run of ``method`` (RePr's keys only
    when ``method`` is ``repr``); ``ValueError`` for an unknown name."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    out = []
    for key, value, _ in PROTOCOLS[name]:
        if key.startswith(("repr.", "repr:")) and method != "repr":
            continue
        key = key.removeprefix("repr:")
        out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def protocol_table(name: str) -> str:
    """Markdown table (setting, value, source) of a protocol, for the README."""
    rows = ["| setting | value | source |", "| --- | --- | --- |"]
    rows += [f"| `{k.removeprefix('repr:')}`{' (RePr runs)' if k.startswith('repr:') else ''} | `{v}` | {src} |"
             for k, v, src in PROTOCOLS[name]]
    return "\n".join(rows)


__all__ = ["PROTOCOLS", "protocol_overrides", "protocol_table"]
