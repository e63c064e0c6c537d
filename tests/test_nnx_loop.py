"""Every method in NNX's own loop (repr_jax.nnx.Pruner): nnx.Optimizer, nnx.jit, in place —
the same parameters and masks as the functional path; a residual + depthwise + dropout NNX
model prunes with RePr and li-l1 and shrinks in place with the masked model's logits."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import repr_jax as rj
from repr_jax.models.nnx_adapter import pure_dict


class Net(nnx.Module):
    """conv + BN stem, a residual block, a depthwise-separable block, optional dropout."""

    def __init__(self, rngs, dropout: float = 0.0, width: int = 8):
        self.stem = nnx.Conv(3, width, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.res = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(width, width, (3, 3), feature_group_count=width, rngs=rngs)
        self.pw = nnx.Conv(width, 12, (1, 1), rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(12, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        x = x + nnx.relu(self.res(x))
        x = nnx.relu(self.pw(nnx.relu(self.dw(x))))
        return self.head(self.drop(x.mean(axis=(1, 2))))


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def _nnx_step():
    @nnx.jit
    def step(model, optimizer, pr, x, y, key):
        pr.before_step(model, key)

        def loss_fn(model):
            logits = pr.forward(model, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + \
                pr.loss_terms(model, x, y, logits, key)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, masks=pr.update_masks(model))
        pr.after_step()
        return loss
    return step


@pytest.mark.parametrize("method,settings", [("repr", dict(s1=1, s2=1, iterations=1, per_layer=True)),
                                             ("li-l1", dict(prune_epoch=1, fraction=0.5))])
def test_the_nnx_loop_trains_to_the_functional_paths_parameters_and_masks(method, settings):
    x, y = _data()
    batch, epochs = 16, 3
    mine, theirs = Net(nnx.Rngs(0)), Net(nnx.Rngs(0))
    pr = rj.nnx.Pruner(method, mine, x[:1], epochs=epochs, steps_per_epoch=len(y) // batch, batch_size=batch,
                       scoring_data=(x, y), **settings)
    optimizer = nnx.Optimizer(mine, pr.wrap(optax.sgd(0.05, momentum=0.9)), wrt=nnx.Param)
    step = _nnx_step()

    fp = rj.Pruner(method, theirs, x[:1], epochs=epochs, steps_per_epoch=len(y) // batch, batch_size=batch,
                   scoring_data=(x, y), **settings)
    tx = fp.wrap(optax.sgd(0.05, momentum=0.9))
    variables = fp.variables()
    opt_state, ps = tx.init(variables["params"]), fp.init(variables["params"])

    @jax.jit
    def fstep(variables, opt_state, ps, xb, yb, key):
        ps = fp.before_step(variables, ps, key)

        def loss_fn(params):
            logits, stats = fp.forward({**variables, "params": params}, ps, xb, train=True)
            terms = fp.loss_terms(params, variables, ps, xb, yb, logits, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean() + sum(terms.values()), stats
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"], masks=fp.update_masks(variables, ps))
        return ({"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats},
                opt_state, fp.after_step(ps))

    saw_transition = False
    for epoch in range(epochs):
        lines = pr.before_epoch(epoch, mine, optimizer)
        variables, opt_state, ps, events = fp.before_epoch(epoch, variables, opt_state, ps)
        saw_transition |= bool(lines)
        mine.train()
        for i in range(len(y) // batch):
            xb, yb, key = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch], jax.random.key(i)
            step(mine, optimizer, pr, xb, yb, key)
            variables, opt_state, ps = fstep(variables, opt_state, ps, xb, yb, key)
        pr.after_epoch(epoch, mine, optimizer)
        variables, opt_state, ps, _ = fp.after_epoch(epoch, variables, opt_state, ps)
        got = pure_dict(nnx.state(mine, nnx.Param))
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(variables["params"])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6,
                                       err_msg=f"{method} epoch {epoch}")
        for name, live in fp.live(ps).items():
            np.testing.assert_array_equal(np.asarray(pr.live()[name]), np.asarray(live))
    assert saw_transition
    if method == "li-l1":   # RePr has revived every filter by now
        assert any(np.asarray(v).min() == 0 for v in pr.live().values())


def test_an_nnx_model_with_residual_depthwise_and_dropout_prunes_and_shrinks_in_place():
    x, y = _data()
    batch = 16
    model = Net(nnx.Rngs(0), dropout=0.3, width=8)
    pr = rj.nnx.Pruner("li-l1", model, x[:1], epochs=2, steps_per_epoch=len(y) // batch, batch_size=batch,
                       scoring_data=(x, y), fraction=0.5, prune_groups=True)
    optimizer = nnx.Optimizer(model, pr.wrap(optax.sgd(0.05, momentum=0.9)), wrt=nnx.Param)
    step = _nnx_step()
    for epoch in range(2):
        pr.before_epoch(epoch, model, optimizer)
        model.train()
        for i in range(len(y) // batch):
            step(model, optimizer, pr, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch], jax.random.key(i))
        pr.after_epoch(epoch, model, optimizer)
    model.eval()
    masked = rj.adapt(model).apply(pr.functional.masked_variables(rj.adapt(model).init(), pr.state()), x)
    before = sum(np.size(v) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    exported = pr.shrink(model)
    after = sum(np.size(v) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert after < before and exported.params_after == after
    assert model.dw.feature_group_count == model.dw.in_features == model.dw.out_features < 8
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(masked), atol=1e-4)


def test_repr_in_the_nnx_loop_with_dropout_drops_and_reinitialises():
    x, y = _data()
    batch = 16
    model = Net(nnx.Rngs(0), dropout=0.3)
    pr = rj.nnx.Pruner("repr", model, x[:1], epochs=3, steps_per_epoch=len(y) // batch, batch_size=batch,
                       s1=1, s2=1, iterations=1, per_layer=True)
    optimizer = nnx.Optimizer(model, pr.wrap(optax.sgd(0.05, momentum=0.9)), wrt=nnx.Param)
    step = _nnx_step()
    lines = []
    for epoch in range(3):
        lines += pr.before_epoch(epoch, model, optimizer)
        model.train()
        for i in range(len(y) // batch):
            step(model, optimizer, pr, x[:batch], y[:batch], jax.random.key(i))
        if epoch == 1:
            dead = {k: np.asarray(v) == 0 for k, v in pr.live().items()}
            assert dead["stem"].any() and np.all(np.asarray(model.stem.kernel[...])[..., dead["stem"]] == 0)
        lines += pr.after_epoch(epoch, model, optimizer)
    assert any(l.startswith("drop round 1") for l in lines) and any(l.startswith("re-init round 1") for l in lines)
    assert all(np.asarray(v).min() == 1 for v in pr.live().values())
    # dropout in training draws from the module's own Rngs: two calls differ
    model.train()
    assert not np.allclose(np.asarray(model(x[:4])), np.asarray(model(x[:4])))
