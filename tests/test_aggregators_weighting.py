"""Loss-weighting aggregators against independent float64 numpy versions of the papers' rules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_jax.aggregators import weighting as W

T = 3
SHAPES = {"a": (4,), "b": (2, 3)}  # one task's gradient: 10 numbers in two leaves
DIM = sum(int(np.prod(s)) for s in SHAPES.values())

LOSS_BASED = ("uw", "dwa", "gls", "famo", "stch", "imtl_l", "gradnorm", "db_mtl")
KNOBS = {"fixed": {"weights": (0.5, 1.0, 2.0)}}  # knobs needed to build with T = 3


def knobs_for(name, num_tasks):
    if name == "fixed":
        return (("weights", tuple(float(i + 1) for i in range(num_tasks))),)
    return ()


# ----------------------------------------------------------------------------- plumbing


def tree(J):
    """[T, DIM] numpy -> per-task gradient pytree (float32 leaves [T, *shape])."""
    J = np.asarray(J)
    out, i = {}, 0
    for k, shape in SHAPES.items():
        n = int(np.prod(shape))
        out[k] = jnp.asarray(J[:, i:i + n].reshape((len(J), *shape)), jnp.float32)
        i += n
    return out


def flat(direction):
    """Direction pytree (no task axis) -> [DIM] float64, in SHAPES' leaf order."""
    return np.concatenate([np.asarray(direction[k], np.float64).ravel() for k in SHAPES])


def params():
    return {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()}


@functools.cache
def compiled(name, num_tasks, knobs=()):
    """The aggregator and its jitted update, built once per configuration."""
    agg = W.FACTORIES[name](num_tasks, **dict(knobs))
    return agg, jax.jit(agg.update)


def run(name, Js, Ls, knobs=(), num_tasks=T):
    """Jitted updates over a sequence; returns [(direction [DIM] f64, weights f64, state)]."""
    agg, update = compiled(name, num_tasks, tuple(sorted(dict(knobs).items())))
    state = agg.init(params())
    out = []
    for J, L in zip(Js, Ls):
        value = None if L is None else jnp.asarray(L, jnp.float32)
        direction, state = update(tree(J), state, value=value)
        out.append((flat(direction), np.asarray(state.weights, np.float64), state))
    return out


def f32(x):
    """Round numpy inputs to float32 exactly as the aggregator sees them."""
    return np.asarray(np.asarray(x, np.float32), np.float64)


def sequence(seed, steps, decay=None):
    """Random Jacobians (distinct task norms) and positive losses for `steps` updates."""
    rng = np.random.default_rng(seed)
    scales = np.array([0.5, 1.0, 3.0])[:, None]
    Js = [f32(rng.normal(size=(T, DIM)) * scales) for _ in range(steps)]
    base = rng.uniform(0.5, 2.0, T)
    rates = np.array([0.9, 0.7, 1.05]) if decay is None else decay
    Ls = [f32(base * rates ** k * rng.uniform(0.95, 1.05, T)) for k in range(steps)]
    return Js, Ls


def close(actual, expected, rtol=2e-5, atol=1e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def check_against(out, expected, rtol=2e-5):
    for (d, w, _), (d_ref, w_ref) in zip(out, expected, strict=True):
        close(w, w_ref, rtol=rtol)
        close(d, d_ref, rtol=rtol, atol=1e-5 * max(1.0, np.abs(d_ref).max()))


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


class NpAdam:
    """Adam (Kingma & Ba) with torch-style L2 weight decay, float64."""

    def __init__(self, lr, n, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0

    def step(self, p, g):
        g = g + self.wd * p
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


# ----------------------------------------------------------------------------- references


def test_ew_is_the_plain_sum():
    Js, Ls = sequence(0, 2)
    for (d, w, _), J in zip(run("ew", Js, [None, None]), Js):
        close(w, np.ones(T))
        close(d, J.sum(0))
    agg = W.ew(T)
    g = tree(Js[0])
    direction, _ = agg.update(g, agg.init(params()))
    for k in SHAPES:
        np.testing.assert_allclose(direction[k], g[k].sum(0), rtol=1e-6)


def test_fixed_matches_linear_scalarisation():
    Js, _ = sequence(1, 2)
    w = np.array([0.5, 1.0, 2.0])
    check_against(run("fixed", Js, [None, None], KNOBS["fixed"]), [(w @ J, w) for J in Js])
    agg = W.fixed(2, 0.25)  # a scalar applies to every task
    _, state = agg.update({"x": jnp.ones((2, 1))}, agg.init(None))
    close(np.asarray(state.weights), [0.25, 0.25])


@pytest.mark.parametrize("s0", [0.0, 0.3])
def test_uw_follows_adam_on_the_log_variances(s0):
    Js, Ls = sequence(2, 6)
    lr = 0.05
    s, adam, expected = np.full(T, s0), NpAdam(lr, T), []
    for J, L in zip(Js, Ls):
        w = np.exp(-s)  # objective sum_t exp(-s_t) L_t + s_t
        expected.append((w @ J, w))
        s = adam.step(s, 1 - np.exp(-s) * L)
    out = run("uw", Js, Ls, {"learning_rate": lr, "init_log_variance": s0})
    check_against(out, expected)
    # Adam's step m/sqrt(v) amplifies float32 rounding of near-zero gradients.
    close(np.asarray(out[-1][2].inner.log_scale), s, atol=2e-5)


def test_imtl_l_follows_adam_on_the_scales():
    Js, Ls = sequence(3, 6)
    lr = 0.05
    s, adam, expected = np.zeros(T), NpAdam(lr, T), []
    for J, L in zip(Js, Ls):
        w = np.exp(s)  # objective sum_t exp(s_t) L_t - s_t
        expected.append((w @ J, w))
        s = adam.step(s, np.exp(s) * L - 1)
    check_against(run("imtl_l", Js, Ls, {"learning_rate": lr}), expected)


@pytest.mark.parametrize("temperature, smoothing", [(2.0, 0.0), (0.5, 0.6)])
def test_dwa_uses_the_ratio_of_the_two_previous_losses(temperature, smoothing):
    Js, Ls = sequence(4, 6)
    smoothed, expected = [], []
    for k, (J, L) in enumerate(zip(Js, Ls)):
        ratio = smoothed[k - 1] / smoothed[k - 2] if k >= 2 else None
        w = np.ones(T) if ratio is None else T * softmax(ratio / temperature)
        expected.append((w @ J, w))
        smoothed.append(L if k == 0 else smoothing * smoothed[-1] + (1 - smoothing) * L)
    out = run("dwa", Js, Ls, {"temperature": temperature, "smoothing": smoothing})
    check_against(out, expected)
    close(out[-1][1].sum(), T)


def test_gls_is_the_gradient_of_the_geometric_mean():
    Js, Ls = sequence(5, 3)
    expected = [(w @ J, w) for J, L in zip(Js, Ls)
                for w in [np.prod(L) ** (1 / T) / (T * L)]]
    check_against(run("gls", Js, Ls), expected)
    # Finite-difference check of the gradient of (prod L)^(1/T) through L(θ) = a + Jθ.
    a, J = Ls[0], Js[0][:, :T]  # a square, well-conditioned Jacobian
    gm = lambda theta: np.prod(a + J @ theta) ** (1 / T)
    h = 1e-6
    fd = np.array([(gm(h * e) - gm(-h * e)) / (2 * h) for e in np.eye(T)])
    close(expected[0][1] @ J, fd, rtol=1e-5)


def ref_famo(Js, Ls, lr, wd, min_loss, eps=1e-8):
    xi, adam, prev, out = np.zeros(T), NpAdam(lr, T, weight_decay=wd), None, []
    for J, L in zip(Js, Ls):
        ell = L - min_loss + eps
        if prev is not None:
            z = softmax(xi)
            delta = np.log(prev) - np.log(ell)
            jac = np.diag(z) - np.outer(z, z)  # d softmax / d xi
            xi = adam.step(xi, jac.T @ delta)
        z = softmax(xi)
        c = (z / ell) / np.sum(z / ell)
        out.append((c @ J, c))
        prev = ell
    return out, xi


@pytest.mark.parametrize("knobs", [{}, {"learning_rate": 0.2, "weight_decay": 0.1,
                                        "min_loss": (0.01, 0.0, 0.2)}])
def test_famo_matches_the_paper_update(knobs):
    Js, Ls = sequence(6, 7, decay=np.array([0.6, 0.95, 1.1]))
    lr = knobs.get("learning_rate", 0.025)
    wd = knobs.get("weight_decay", 1e-3)
    min_loss = np.asarray(knobs.get("min_loss", 0.0))
    expected, xi = ref_famo(Js, Ls, lr, wd, min_loss)
    out = run("famo", Js, Ls, knobs)
    check_against(out, expected)
    close(np.asarray(out[-1][2].inner.logits), xi, atol=2e-5)  # Adam amplifies f32 rounding
    close(out[-1][1].sum(), 1.0)
    # The fastest-improving task loses weight relative to the slowest one.
    assert xi[0] < xi[2]


def ref_stch(Ls, Js, mu, warmup, nadir=None, log_losses=True, ideal=0.0):
    out = []
    n = None if nadir is None else np.broadcast_to(nadir, (T,))
    for k, (J, L) in enumerate(zip(Js, Ls)):
        if n is None and k == max(warmup, 1) - 1:
            n = np.mean(Ls[:max(warmup, 1)], axis=0)
        if k < warmup:
            w = 1 / L if log_losses else np.ones(T)  # sum of (log) losses
        else:
            f = np.log(L / n) if log_losses else L / n
            df = 1 / L if log_losses else 1 / n
            w = T * softmax((f - ideal) / mu) * df
        out.append((w @ J, w))
    return out


@pytest.mark.parametrize("knobs", [
    {},
    {"mu": 0.3, "warmup_steps": 2},
    {"mu": 0.5, "nadir": (1.0, 2.0, 0.5), "warmup_steps": 1},
    {"mu": 0.7, "nadir": 1.0, "log_losses": False, "ideal": (0.1, 0.0, -0.2)},
])
def test_stch_matches_the_smooth_tchebycheff_gradient(knobs):
    Js, Ls = sequence(7, 5)
    expected = ref_stch(Ls, Js, knobs.get("mu", 1.0), knobs.get("warmup_steps", 0),
                        knobs.get("nadir"), knobs.get("log_losses", True),
                        np.asarray(knobs.get("ideal", 0.0)))
    check_against(run("stch", Js, Ls, knobs), expected)


def test_stch_gradient_by_finite_differences():
    """Plain STCH on raw losses: the direction is the gradient of mu log sum exp(L/mu)."""
    Js, Ls = sequence(8, 1)
    a, J, mu = Ls[0], Js[0][:, :T], 0.4
    obj = lambda theta: mu * np.log(np.sum(np.exp((a + J @ theta) / mu)))
    h = 1e-6
    fd = np.array([(obj(h * e) - obj(-h * e)) / (2 * h) for e in np.eye(T)])
    d, w, _ = run("stch", [Js[0]], [a], {"mu": mu, "nadir": 1.0, "log_losses": False})[0]
    close(w / T @ J, fd, rtol=1e-5)  # weights carry LibMTL's factor T


def ref_gradnorm(Js, Ls, alpha, lr):
    w, adam, L0, out = np.ones(T), NpAdam(lr, T), Ls[0], []
    for J, L in zip(Js, Ls):
        out.append((w @ J, w))
        norms = np.linalg.norm(J, axis=1)
        G = w * norms
        ratio = L / L0
        r = ratio / ratio.mean()
        target = G.mean() * r ** alpha  # held constant
        w = adam.step(w, np.sign(G - target) * norms)  # d/dw sum_t |G_t - target_t|
        w = np.maximum(w, 1e-6)
        w = T * w / w.sum()
    return out, w


@pytest.mark.parametrize("alpha, lr", [(1.5, 0.025), (0.5, 0.6)])
def test_gradnorm_matches_the_paper_update(alpha, lr):
    Js, Ls = sequence(9, 7)
    expected, w_next = ref_gradnorm(Js, Ls, alpha, lr)
    out = run("gradnorm", Js, Ls, {"alpha": alpha, "learning_rate": lr})
    # Large Adam steps amplify float32 rounding of the weights a little.
    check_against(out, expected, rtol=1e-4)
    close(np.asarray(out[-1][2].inner.weights), w_next, rtol=1e-4)
    for _, w, _ in out:
        close(w.sum(), T)


def ref_db_mtl(Js, Ls, beta, sigma):
    buf, out = np.zeros((T, DIM)), []
    for k, (J, L) in enumerate(zip(Js, Ls), start=1):
        log_grad = J / (L + 1e-8)[:, None]  # gradient of log(L + 1e-8)
        buf = log_grad + beta / k ** sigma * (buf - log_grad)
        norms = np.linalg.norm(buf, axis=1)
        alpha = norms.max() / norms
        out.append((alpha @ buf, alpha))
    return out, buf


@pytest.mark.parametrize("beta, sigma", [(0.9, 0.5), (0.5, 0.0), (0.0, 0.5)])
def test_db_mtl_matches_the_paper_update(beta, sigma):
    Js, Ls = sequence(10, 5)
    expected, buf = ref_db_mtl(Js, Ls, beta, sigma)
    out = run("db_mtl", Js, Ls, {"beta": beta, "beta_sigma": sigma})
    check_against(out, expected)
    state = out[-1][2]
    close(np.concatenate([np.asarray(state.inner.buffer[k]).reshape(T, -1) for k in SHAPES],
                         axis=1), buf, rtol=1e-5, atol=1e-6)
    if beta == 0.0:  # no EMA: the raw-gradient weights are alpha / L
        d, alpha, _ = out[-1]
        close(d, (alpha / (Ls[-1] + 1e-8)) @ Js[-1], atol=1e-5 * np.abs(d).max())


def test_db_mtl_direction_is_alpha_times_buffer_and_balanced():
    Js, Ls = sequence(11, 3)
    for d, alpha, state in run("db_mtl", Js, Ls):
        buf = np.concatenate([np.asarray(state.inner.buffer[k], np.float64).reshape(T, -1)
                              for k in SHAPES], axis=1)
        close(d, alpha @ buf, atol=1e-5 * np.abs(d).max())
        scaled = np.linalg.norm(alpha[:, None] * buf, axis=1)
        close(scaled, np.full(T, scaled.max()), rtol=1e-5)


def test_db_mtl_needs_matching_params():
    with pytest.raises(ValueError, match="params"):
        W.db_mtl(T).init(None)
    agg = W.db_mtl(T)
    state = agg.init({"a": jnp.zeros(4)})
    with pytest.raises(ValueError, match="buffer"):
        agg.update(tree(np.ones((T, DIM))), state, value=jnp.ones(T))


# ----------------------------------------------------------------------------- RLW


@pytest.mark.parametrize("distribution, var", [("normal", 2.0), ("uniform", 1 / 6),
                                               ("dirichlet", 1 / 6)])
def test_rlw_samples_softmax_weights(distribution, var):
    agg = W.rlw(T, distribution=distribution, seed=3)
    grads = tree(np.random.default_rng(0).normal(size=(T, DIM)))

    @jax.jit
    def draws(state):
        def body(s, _):
            d, s = agg.update(grads, s)
            return s, (s.weights, flat_jnp(d))
        return jax.lax.scan(body, state, None, length=400)[1]

    weights, directions = (np.asarray(x, np.float64) for x in draws(agg.init(params())))
    assert np.all(weights > 0)
    close(weights.sum(1), np.ones(len(weights)), rtol=1e-6)
    J = np.concatenate([np.asarray(grads[k]).reshape(T, -1) for k in SHAPES], axis=1)
    close(directions, weights @ J, atol=1e-5)
    # log w_0 - log w_1 is the difference of two samples: N(0, 2), or U(0,1) (and
    # Dirichlet(1,1,1)) differences with variance 1/6 and values in (-1, 1).
    diff = np.log(weights[:, 0]) - np.log(weights[:, 1])
    assert abs(diff.var() - var) < 0.25 * var
    assert abs(diff.mean()) < 4 * np.sqrt(var / len(diff))
    if distribution != "normal":
        assert np.all(np.abs(diff) < 1)
    assert len(np.unique(weights[:, 0])) == len(weights)  # a new sample every update


def flat_jnp(direction):
    return jnp.concatenate([direction[k].ravel() for k in SHAPES])


def test_rlw_is_reproducible_per_seed():
    g = tree(np.ones((T, DIM)))

    def weights(seed):
        agg = W.rlw(T, seed=seed)
        _, state = agg.update(g, agg.init(params()))
        return np.asarray(state.weights)

    np.testing.assert_array_equal(weights(0), weights(0))
    assert not np.allclose(weights(0), weights(1))


# ----------------------------------------------------------------------------- generic


@pytest.mark.parametrize("name", sorted(W.FACTORIES))
def test_direction_is_the_weighted_sum_and_weights_are_float32(name):
    Js, Ls = sequence(12, 4)
    for (d, w, state), J in zip(run(name, Js, Ls, knobs_for(name, T)), Js):
        assert state.weights.dtype == jnp.float32 and state.weights.shape == (T,)
        if name == "db_mtl":  # weights apply to the EMA buffer (tested above)
            continue
        close(d, w @ J, atol=1e-5 * max(1.0, np.abs(d).max()))


@pytest.mark.parametrize("name", sorted(W.FACTORIES))
def test_vmap_over_a_batch_of_states_matches_one_by_one(name):
    agg, update = compiled(name, T, knobs_for(name, T))
    Js, Ls = sequence(13, 6)
    states, state = [], agg.init(params())
    for J, L in zip(Js[:3], Ls[:3]):  # three states at different points of a run
        _, state = update(tree(J), state, value=jnp.asarray(L))
        states.append(state)
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    batch_grads = stack([tree(J) for J in Js[3:]])
    batch_values = jnp.asarray(np.stack(Ls[3:]), jnp.float32)
    dirs, new_states = jax.jit(jax.vmap(agg.update))(batch_grads, stack(states),
                                                     value=batch_values)
    for i, (J, L, s) in enumerate(zip(Js[3:], Ls[3:], states)):
        d_i, s_i = update(tree(J), s, value=jnp.asarray(L))
        for a, b in zip(jax.tree_util.tree_leaves((d_i, s_i)),
                        jax.tree_util.tree_leaves((dirs, new_states))):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b[i], np.float64),
                                       rtol=1e-5, atol=1e-6)


def test_factories_cover_every_method():
    assert set(W.FACTORIES) == {"ew", "fixed", "uw", "dwa", "gls", "rlw", "famo", "stch",
                                "imtl_l", "gradnorm", "db_mtl"}
    for name, factory in W.FACTORIES.items():
        assert factory is getattr(W, name)
        agg = factory(2, **dict(knobs_for(name, 2)))
        assert agg.init(params()).weights.shape == (2,)


# ----------------------------------------------------------------------------- degenerate inputs

GRAD_KINDS = ("zero", "equal", "opposite", "collinear", "tiny", "huge", "huge_equal", "mixed",
              "random")
LOSS_VALUES = (0.0, 1e-30, 1e-8, 1.0, 1e30)


def degenerate_jacobian(kind, num_tasks, rng):
    u = rng.normal(size=DIM)
    u /= np.linalg.norm(u)
    rows = {
        "zero": [0 * u] * num_tasks,
        "equal": [u] * num_tasks,
        "opposite": [u * (-1) ** t for t in range(num_tasks)],
        "collinear": [u * (t + 1) * 0.5 for t in range(num_tasks)],
        "tiny": [1e-30 * v / np.linalg.norm(v) for v in rng.normal(size=(num_tasks, DIM))],
        "huge": [1e30 * v / np.linalg.norm(v) for v in rng.normal(size=(num_tasks, DIM))],
        "huge_equal": [1e30 * np.eye(DIM)[0]] * num_tasks,  # all mass in one entry
        "mixed": [u * s for s in (1e30, 1e-30, 1.0)[:num_tasks]],
        "random": list(rng.normal(size=(num_tasks, DIM))),
    }[kind]
    return np.stack(rows)


def all_finite(tree_):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree_)
               if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


@pytest.mark.parametrize("name", sorted(W.FACTORIES))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_degenerate_inputs_give_finite_outputs(name, data):
    num_tasks = data.draw(st.sampled_from([1, 2, 3]), label="T")
    kinds = data.draw(st.lists(st.sampled_from(GRAD_KINDS), min_size=3, max_size=3),
                      label="grads")
    losses = data.draw(st.lists(st.lists(st.sampled_from(LOSS_VALUES), min_size=num_tasks,
                                         max_size=num_tasks), min_size=3, max_size=3),
                       label="losses")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    agg, update = compiled(name, num_tasks, knobs_for(name, num_tasks))
    state = agg.init(params())
    for kind, L in zip(kinds, losses):
        J = degenerate_jacobian(kind, num_tasks, rng)
        direction, state = update(tree(J), state, value=jnp.asarray(L, jnp.float32))
        assert all_finite(direction), (kind, L)
        assert all_finite(state), (kind, L)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", LOSS_BASED)
def test_loss_based_methods_need_value(name):
    agg, _ = compiled(name, T, knobs_for(name, T))
    state = agg.init(params())
    g = tree(np.ones((T, DIM)))
    with pytest.raises(ValueError, match="value"):
        agg.update(g, state)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        agg.update(g, state, value=jnp.ones(2))


@pytest.mark.parametrize("name", sorted(W.FACTORIES))
def test_bad_inputs_raise(name):
    with pytest.raises(ValueError, match="num_tasks"):
        W.FACTORIES[name](0, **dict(knobs_for(name, 1)))
    agg, _ = compiled(name, T, knobs_for(name, T))
    with pytest.raises(ValueError, match="leading task axis"):
        agg.update(tree(np.ones((2, DIM))), agg.init(params()), value=jnp.ones(T))


@pytest.mark.parametrize("name, knobs, knob", [
    ("fixed", {"weights": (1.0, -1.0, 1.0)}, "weights"),
    ("fixed", {"weights": (1.0, 1.0)}, "weights"),
    ("fixed", {"weights": (1.0, np.nan, 1.0)}, "weights"),
    ("fixed", {"weights": "abc"}, "weights"),
    ("uw", {"learning_rate": 0.0}, "learning_rate"),
    ("uw", {"init_log_variance": np.inf}, "init_log_variance"),
    ("imtl_l", {"learning_rate": -1e-3}, "learning_rate"),
    ("dwa", {"temperature": 0.0}, "temperature"),
    ("dwa", {"temperature": "2"}, "temperature"),
    ("dwa", {"smoothing": 1.0}, "smoothing"),
    ("rlw", {"distribution": "beta"}, "distribution"),
    ("rlw", {"seed": 1.5}, "seed"),
    ("rlw", {"seed": 2**64}, "seed"),
    ("famo", {"learning_rate": 0.0}, "learning_rate"),
    ("famo", {"weight_decay": -1.0}, "weight_decay"),
    ("famo", {"min_loss": (0.0, 0.0)}, "min_loss"),
    ("famo", {"eps": 0.0}, "eps"),
    ("stch", {"mu": 0.0}, "mu"),
    ("stch", {"warmup_steps": -1}, "warmup_steps"),
    ("stch", {"warmup_steps": 2.0}, "warmup_steps"),
    ("stch", {"nadir": 0.0}, "nadir"),
    ("stch", {"log_losses": 1}, "log_losses"),
    ("stch", {"ideal": (0.0, 1.0)}, "ideal"),
    ("gradnorm", {"alpha": -0.5}, "alpha"),
    ("gradnorm", {"learning_rate": 0.0}, "learning_rate"),
    ("db_mtl", {"beta": 1.0}, "beta"),
    ("db_mtl", {"beta_sigma": -1.0}, "beta_sigma"),
])
def test_bad_knobs_raise_naming_the_knob(name, knobs, knob):
    with pytest.raises(ValueError, match=knob):
        W.FACTORIES[name](T, **knobs)
