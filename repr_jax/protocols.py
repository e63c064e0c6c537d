"""Protocol presets: every setting of the RePr paper's and of the official code's runs at once.

``--protocol paper`` follows the paper (Prakash et al. 2019) and the first author's thesis
(iamaaditya/Thesis, ``chapters/repr.tex``); ``--protocol official`` follows the official
code (iamaaditya/repr-ortho at its stored snapshot: ``train.py``, ``model.py``,
``ranking.py``, ``ortho.py``). Each entry is ``(setting key, value, source)``; the source
says where the value comes from, or that the paper is silent and which value we chose.

A preset is applied before ``--method``, the named flags and ``--set``, so anything can be
changed on top of it; RePr's entries apply only when the method is ``repr``. The name is
recorded as ``protocol`` in ``config.json`` (with every resulting setting).
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
    ),
}


def protocol_overrides(name: str, method: str) -> list[str]:
    """``KEY=VALUE`` strings of protocol ``name`` for a run of ``method`` (RePr's keys only
    when ``method`` is ``repr``); ``ValueError`` for an unknown name."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    out = []
    for key, value, _ in PROTOCOLS[name]:
        if key.startswith("repr.") and method != "repr":
            continue
        out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def protocol_table(name: str) -> str:
    """Markdown table (setting, value, source) of a protocol, for the README."""
    rows = ["| setting | value | source |", "| --- | --- | --- |"]
    rows += [f"| `{k}` | `{v}` | {src} |" for k, v, src in PROTOCOLS[name]]
    return "\n".join(rows)


__all__ = ["PROTOCOLS", "protocol_overrides", "protocol_table"]
