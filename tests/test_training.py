"""Side-by-side training: same weights, same batches, same optimizer, so the same loss curve."""

import numpy as np
import pytest
import torch

from flax_lenet.app import data, training
from flax_lenet.porting.tolerances import TRAIN_FLOAT32_FIRST_STEPS, TRAIN_FLOAT64

# A small slice of the digits keeps every run to a few seconds: 2 epochs x 4 batches of 16,
# with the learning-rate drop after epoch 1 and the random shifts on.
TINY = dict(epochs=2, batch_size=16, max_steps_per_epoch=4, lr_decay_at=0.5, shift=2)
TINY_STEPS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see conftest.py


@pytest.fixture(scope="module")
def tiny():
    d = data.load_digits()
    return data.make_dataset("digits[:256]", d.x_train[:256], d.y_train[:256], d.x_test[:64], d.y_test[:64])


@pytest.fixture(scope="module")
def runs(tiny):
    cache = {}

    def run(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = training.train(tiny, training.TrainConfig(**{**TINY, **kw}))
        return cache[key]
    return run


@pytest.mark.x64
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_loss_curves_agree_step_for_step_float64(runs, loss):
    r = runs(dtype="float64", loss=loss)
    assert len(r.flax.step_loss) == len(r.torch.step_loss) == TINY_STEPS
    gap = training.step_loss_diff(r.flax.step_loss, r.torch.step_loss)
    assert gap <= TRAIN_FLOAT64.rtol, f"step losses differ by {gap:.2e}"


@pytest.mark.x64
def test_trained_weights_agree_float64(runs):
    from flax_lenet import convert
    from tests.helpers import assert_tree_close
    r = runs(dtype="float64", loss="ce")
    assert_tree_close(convert.flax_to_torch(r.flax_params), r.torch_state, TRAIN_FLOAT64, "weights")


def test_first_steps_agree_float32(runs):
    r = runs(dtype="float32", loss="ce")
    gap = training.step_loss_diff(r.flax.step_loss, r.torch.step_loss)
    assert gap <= TRAIN_FLOAT32_FIRST_STEPS.rtol, f"step losses differ by {gap:.2e}"


def _torch_fault(monkeypatch, fault):
    build = training.build_optimizers

    def broken(cfg, torch_params, steps_per_epoch):
        tx, opt, sched = build(cfg, torch_params, steps_per_epoch)
        if fault == "no momentum in torch":
            opt.param_groups[0]["momentum"] = 0.0
        elif fault == "lr drop one step late in torch":
            sched.milestones = {training.decay_step(cfg, steps_per_epoch) + 1: 1}
        return tx, opt, sched
    monkeypatch.setattr(training, "build_optimizers", broken)


@pytest.mark.x64
@pytest.mark.parametrize("fault", ["no momentum in torch", "lr drop one step late in torch"])
def test_a_mismatched_optimizer_fails_the_float64_check(tiny, monkeypatch, fault):
    _torch_fault(monkeypatch, fault)
    r = training.train(tiny, training.TrainConfig(**TINY, dtype="float64"))
    gap = training.step_loss_diff(r.flax.step_loss, r.torch.step_loss)
    assert gap > 1e3 * TRAIN_FLOAT64.rtol, f"{fault}: step losses differ by only {gap:.2e}"


def test_both_frameworks_see_the_same_batches_in_the_same_order():
    cfg = training.TrainConfig(epochs=3, batch_size=10, seed=1)
    order = training.batch_order(95, cfg)
    assert order.shape == (3, 9, 10)                              # 95 // 10 batches, the rest dropped
    for epoch in order:
        assert len(set(epoch.ravel())) == 90                      # no example twice in an epoch
    assert not np.array_equal(order[0], order[1])                 # reshuffled every epoch
    np.testing.assert_array_equal(order, training.batch_order(95, cfg))


def test_both_frameworks_start_from_torchs_initialisation():
    state = training.initial_state(training.TrainConfig(seed=3))
    torch.manual_seed(3)
    from torch_reference import Net
    expected = Net(3).state_dict()
    for k, v in expected.items():
        np.testing.assert_array_equal(state[k], v.numpy())


def test_a_loss_that_becomes_nan_stops_training_and_says_at_which_step(tiny):
    cfg = training.TrainConfig(**{**TINY, "lr": 1e4, "momentum": 0.0}, loss="mse")
    with pytest.raises(training.TrainingDiverged, match=r"loss became (nan|inf) at step \d+ \(epoch 1, batch \d\)") as e:
        training.train(tiny, cfg)
    good = e.value.last_good
    assert good.flax.train_loss == []                                     # no finite epoch: the initial weights
    for v in good.torch_state.values():
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("kw, message", [
    (dict(loss="l1"), "loss: expected one of"), (dict(dtype="float16"), "dtype: expected"),
    (dict(epochs=0), "epochs: expected a positive integer, found 0"), (dict(lr=-1.0), "lr: expected"),
    (dict(lr_decay_at=2.0), "lr_decay_at: expected a fraction"),
    (dict(seed=-1), "seed: expected a non-negative integer, found -1"), (dict(momentum=1.5), "momentum")])
def test_bad_configuration_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**kw)


def test_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match="batch_size: expected at most 95 .* found 96"):
        training.batch_order(95, training.TrainConfig(batch_size=96))
