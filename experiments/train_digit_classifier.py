r"""Trains the digit classifier that scores paintings, on mnist5k's train split only.

    python -m experiments.train_digit_classifier            # -> spiral_jax/assets/...

Deterministic (seed 0 by default, CPU): the same command writes the same weights. It
trains `spiral_jax.digit_classifier.DigitCNN` on the 4,000 training digits at 32x32
with small random affine jitter (rotation, scale, shift, so that painted digits that
are a little off-centre still count), Adam with a cosine schedule, and prints the
accuracy on mnist5k's 1,000 held-out digits, which it never trains on. Takes about
two minutes on two CPU cores.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from spiral_jax import datasets
from spiral_jax import digit_classifier as dc

_OUT = flags.DEFINE_string("out", str(dc.DEFAULT_WEIGHTS), "Where to write the weights.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Passes over the 4,000 training digits.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Digits per update.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (initialisation, order, augmentation).")


def augment(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random affine jitter of network inputs [N, S, S, 1] (ink 1 on 0): rotation
    +-12 degrees, scale 0.85-1.15, shift +-2.5 px, bilinear, about the centre."""
    n, s = x.shape[0], x.shape[1]
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    angle = jax.random.uniform(k_rot, (n,), minval=-0.21, maxval=0.21)
    scale = jax.random.uniform(k_scale, (n,), minval=0.85, maxval=1.15)
    shift = jax.random.uniform(k_shift, (n, 2), minval=-2.5, maxval=2.5)
    c = (s - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(s, dtype=jnp.float32), jnp.arange(s, dtype=jnp.float32),
                          indexing="ij")

    def one(img, a, sc, sh):
        # Output pixel p samples the input at R(-a) (p - c - shift) / scale + c.
        py, px = yy - c - sh[0], xx - c - sh[1]
        cos, sin = jnp.cos(a), jnp.sin(a)
        sy = (cos * py + sin * px) / sc + c
        sx = (-sin * py + cos * px) / sc + c
        out = jax.scipy.ndimage.map_coordinates(img[..., 0], [sy, sx], order=1, cval=0.0)
        return out[..., None]

    return jax.vmap(one)(x, angle, scale, shift)


def main(argv):
    del argv
    start = time.perf_counter()
    train = datasets.load("mnist5k", "train", image_size=dc.IMAGE_SIZE, channels=1)
    x_train = np.asarray(dc.preprocess(train.as_float()))
    y_train = train.labels.astype(np.int32)
    n = x_train.shape[0]
    steps_per_epoch = n // _BATCH.value
    total = steps_per_epoch * _EPOCHS.value

    key = jax.random.PRNGKey(_SEED.value)
    key, k_init = jax.random.split(key)
    module = dc.DigitCNN()
    params = dc.init_params(k_init, module)
    opt = optax.adamw(optax.cosine_decay_schedule(_LR.value, total), weight_decay=1e-4)
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, x, y, key):
        def loss_fn(p):
            logits, _ = module.apply(p, augment(key, x))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for epoch in range(_EPOCHS.value):
        key, k_perm = jax.random.split(key)
        order = np.asarray(jax.random.permutation(k_perm, n))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * _BATCH.value:(i + 1) * _BATCH.value]
            key, k_aug = jax.random.split(key)
            params, opt_state, loss = update(
                params, opt_state, x_train[idx], y_train[idx], k_aug
            )
            losses.append(float(loss))
        if (epoch + 1) % 5 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}  train loss {np.mean(losses):.4f}")

    clf = dc.DigitClassifier(module, params)
    accuracy = {}
    for size in (16, 28, 32, 64):
        held = datasets.load("mnist5k", "test", image_size=size, channels=1)
        accuracy[size] = float(np.mean(clf.predict(held.as_float()) == held.labels))
    train_acc = float(np.mean(clf.predict(train.as_float()) == train.labels))
    meta = {
        "trained_by": "python -m experiments.train_digit_classifier "
        f"--epochs={_EPOCHS.value} --batch_size={_BATCH.value} "
        f"--learning_rate={_LR.value} --seed={_SEED.value}",
        "data": "mnist5k train split (4,000 digits), 32x32, ink dark on white",
        "train_accuracy": train_acc,
        "heldout_accuracy": {str(k): v for k, v in accuracy.items()},
        "jax_version": jax.__version__,
    }
    dc.save(_OUT.value, params, meta)
    print(f"train accuracy {train_acc:.4f}")
    for size, acc in accuracy.items():
        print(f"held-out accuracy at {size}x{size}: {acc:.4f} ({len(held.labels)} digits)")
    print(f"wrote {_OUT.value} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
