"""LR range test: schedules, accumulation, scores, smoothing and stop rule, suggestion rule,
state restoration, the experiment end to end and the optimizer x batch-size preset."""

from __future__ import annotations

import copy
import itertools
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import lr_finder
from gradkit.experiments.lr_finder import (
    LrFinder,
    RangeTest,
    lr_schedule,
    micro_batches,
    range_test,
    schedule_error,
    smoothing_error,
    state_mismatches,
    steepest_descent,
    stop_rule_error,
    suggestion_error,
    train_step,
)
from gradkit.lib.data import hold_out
from gradkit.lib.training import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


class RecordingSGD(torch.optim.SGD):
    """SGD that remembers the learning rate of every step it takes."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen: list[float] = []

    def step(self, closure=None):
        self.seen.append(self.param_groups[0]["lr"])
        return super().step(closure)


def tiny_problem(batches: int = 3, seed: int = 0):
    """A linear 4 -> 3 classifier and a loader cycling over `batches` fixed batches."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    data = [(torch.randn(8, 4, generator=generator), torch.randint(3, (8,), generator=generator))
            for _ in range(batches)]
    return model, itertools.cycle(data)


def prepared(ctx, **params) -> LrFinder:
    """The experiment with `params`, its own data and model resolved as the job does."""
    experiment = LrFinder(**params)
    experiment.prepare(ctx)
    return experiment


def test_schedule_is_geometric_from_start_to_end():
    schedule = lr_schedule(1e-7, 10.0, 100)

    assert len(schedule) == 100
    np.testing.assert_allclose(schedule, np.geomspace(1e-7, 10.0, 100), rtol=1e-12)
    assert schedule[0] == 1e-7
    assert schedule[-1] == pytest.approx(10.0, rel=1e-14)


def test_schedule_check_sees_a_ramp_that_misses_its_end():
    assert schedule_error(lr_schedule(1e-7, 10.0, 100), 1e-7, 10.0, 100) < 1e-12
    assert schedule_error(lr_schedule(1e-7, 10.0, 100)[:37], 1e-7, 10.0, 100) < 1e-12
    short = [1e-7 * 1e8 ** (i / 100) for i in range(100)]  # i / num_iter: ends below 10
    assert schedule_error(short, 1e-7, 10.0, 100) > 0.1
    linear = np.linspace(1e-7, 10.0, 100).tolist()
    assert schedule_error(linear, 1e-7, 10.0, 100) > 0.1
    assert schedule_error([1e-7] * 101, 1e-7, 10.0, 100) == math.inf


def test_linear_schedule_is_torch_lr_finders_linear_lr():
    # torch-lr-finder's LinearLR: base_lr + r (end_lr - base_lr), r = last_epoch / (num_iter - 1)
    schedule = lr_schedule(1e-3, 1.0, 11, "linear")

    assert schedule == pytest.approx([1e-3 + i / 10 * (1.0 - 1e-3) for i in range(11)],
                                     rel=1e-15)
    assert schedule[0] == 1e-3 and schedule[-1] == pytest.approx(1.0, rel=1e-15)
    assert schedule_error(schedule, 1e-3, 1.0, 11, "linear") < 1e-12
    assert schedule_error(schedule[:4], 1e-3, 1.0, 11, "linear") < 1e-12
    # the check verifies the mode that ran: each ramp fails the other's oracle
    assert schedule_error(schedule, 1e-3, 1.0, 11, "exp") > 0.1
    assert schedule_error(lr_schedule(1e-3, 1.0, 11, "exp"), 1e-3, 1.0, 11, "linear") > 0.1
    short = [1e-3 + i / 11 * (1.0 - 1e-3) for i in range(11)]  # i / num_iter: ends below 1
    assert schedule_error(short, 1e-3, 1.0, 11, "linear") > 0.05


def test_accumulated_micro_batches_give_the_gradient_and_loss_of_one_large_batch():
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # no batch norm
    x, y = torch.randn(24, 6, generator=generator), torch.randint(3, (24,), generator=generator)
    whole = copy.deepcopy(model)
    full_loss = F.cross_entropy(whole(x), y)
    full_loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the gradient

    loss, norm = train_step(model, optimizer, [(x[i:i + 6], y[i:i + 6]) for i in range(0, 24, 6)],
                            F.cross_entropy)

    for accumulated, full in zip(model.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(accumulated.grad, full.grad, rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(full_loss.item(), rel=1e-6)
    expected = torch.cat([p.grad.flatten() for p in whole.parameters()]).norm().item()
    assert norm == pytest.approx(expected, rel=1e-5)


def test_range_test_takes_one_step_per_accumulation_steps_batches():
    model, loader = tiny_problem(batches=6)
    optimizer = RecordingSGD(model.parameters(), lr=0.5)
    seen = []
    batches = (seen.append(batch) or batch for batch in loader)

    trace = range_test(model, optimizer, batches, lr_schedule(1e-6, 1e-3, 5), smooth_f=0.2,
                       accumulation_steps=3)

    assert optimizer.seen == trace.lrs and len(trace.lrs) == 5
    assert len(seen) == 15  # 5 steps x 3 micro-batches
    first = tiny_problem(batches=6)[0]
    expected = sum(F.cross_entropy(first(x), y).item() / 3 for x, y in seen[:3])
    assert trace.batch_losses[0] == pytest.approx(expected, rel=1e-6)  # the accumulated loss
    assert [len(group) for group in micro_batches(range(7), 3)] == [3, 3]


def test_train_score_smooths_the_batch_loss_taken_before_each_step():
    # torch-lr-finder without val_loader: the loss of each step's batch, before the step
    model, loader = tiny_problem()
    start, data = copy.deepcopy(model), tiny_problem()[1]

    trace = range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                       lr_schedule(1e-1, 1.0, 4), smooth_f=0.5, diverge_th=100.0)

    x, y = next(data)
    assert trace.losses == trace.batch_losses
    assert trace.losses[0] == pytest.approx(F.cross_entropy(start(x), y).item(), rel=1e-6)
    assert trace.smoothed[1] == pytest.approx(0.5 * trace.losses[1] + 0.5 * trace.losses[0],
                                              rel=1e-12)


def test_a_train_scored_run_logs_no_validation_curve_and_passes_its_checks(ctx):
    result = prepared(ctx, score="train", num_iter=30, skip_start=5, skip_end=3,
                      validation_steps=5).run(ctx)

    assert "validation_loss" not in result.series
    assert result.failed_checks == []
    assert "validation/loss/suggested" in result.metrics  # the advice is still validated
    series = result.series
    assert smoothing_error(series["batch_loss"], series["smoothed_loss"], 0.05) <= 1e-12


def test_a_validation_scored_run_smooths_the_validation_loss_not_the_batch_loss(ctx):
    series = prepared(ctx, num_iter=30, skip_start=5, skip_end=3,
                      validation_steps=5).run(ctx).series

    assert smoothing_error(series["validation_loss"], series["smoothed_loss"], 0.05) <= 1e-12
    assert smoothing_error(series["batch_loss"], series["smoothed_loss"], 0.05) > 1e-3


def test_validation_score_is_the_mean_loss_over_the_whole_split_batch_by_batch(ctx,
                                                                             monkeypatch):
    experiment = prepared(ctx)
    workload = experiment.workload
    model = workload.new_model()
    x, y = workload.data.tensors("validation")
    monkeypatch.setattr(lr_finder, "EVALUATION_BATCH", 100)  # 287 items: 100, 100, 87

    loss, accuracy = lr_finder.evaluate_split(model, workload, "validation")

    assert (loss, accuracy) == pytest.approx(evaluate(model, x, y), rel=1e-6)


def test_a_range_test_longer_than_one_pass_cycles_and_says_so(ctx, caplog):
    caplog.set_level("INFO", logger="test")
    result = prepared(ctx, num_iter=25, skip_start=5, skip_end=3, validation_steps=5).run(ctx)

    assert len(result.series["lr"]) == 25  # 1150 items / 64: 18 batches a pass
    assert "the train split gives 18 batches; cycled for 25 steps" in caplog.text


def test_mixed_precision_is_refused_off_cuda_before_any_work(ctx):
    experiment = LrFinder(amp=True)
    with pytest.raises(ConfigError, match=r"^experiment\.amp=true needs device=cuda") as raised:
        experiment.prepare(ctx)
    assert "\n" not in str(raised.value)
    assert not hasattr(experiment, "workload")


@pytest.mark.parametrize("device", [
    "cpu",  # the same scaler wiring, bfloat16 autocast (the experiment itself refuses the CPU)
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs CUDA"))])
def test_mixed_precision_steps_with_an_unscaled_gradient_norm(device):
    generator = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    x = torch.randn(16, 6, generator=generator).to(device)
    y = torch.randint(3, (16,), generator=generator).to(device)
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in plain.parameters()]).norm().item()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler(device)
    dtypes = []
    model[0].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))

    loss, norm = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)],
                            F.cross_entropy, scaler)

    assert math.isfinite(loss) and norm == pytest.approx(expected, rel=3e-2)  # half precision
    assert scaler.get_scale() > 1.0  # the loss was scaled, the norm is not
    assert scaler.state_dict()["_growth_tracker"] == 1  # the scaler took the step
    assert dtypes == [{"cpu": torch.bfloat16, "cuda": torch.float16}[device]]  # autocast
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_mixed_precision_run_on_cuda_passes_its_checks(tmp_path):
    ctx = RunContext(torch.device("cuda"), torch.float32, torch.Generator().manual_seed(0),
                     tmp_path, logging.getLogger("test"))

    result = prepared(ctx, amp=True, num_iter=30, skip_start=5, skip_end=3,
                      validation_steps=5).run(ctx)

    assert result.failed_checks == []
    assert result.summary["amp"] is True and "validation/loss/suggested" in result.metrics


def test_range_test_steps_every_lr_regardless_of_dataset_size():
    model, loader = tiny_problem(batches=3)
    optimizer = RecordingSGD(model.parameters(), lr=0.5)
    schedule = lr_schedule(1e-6, 1e-3, 30)  # too small to diverge

    trace = range_test(model, optimizer, loader, schedule, smooth_f=0.2, diverge_th=5.0)

    assert not trace.diverged
    assert optimizer.seen == trace.lrs == schedule  # 30 steps over 3 batches: cycled
    expected = [trace.losses[0]]
    for loss in trace.losses[1:]:
        expected.append(0.2 * loss + 0.8 * expected[-1])
    assert trace.smoothed == pytest.approx(expected, rel=1e-12)
    assert len(trace.grad_norms) == 30


def test_range_test_stops_at_the_first_smoothed_loss_above_the_threshold():
    model, loader = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trace = range_test(model, optimizer, loader, lr_schedule(1e-3, 1e3, 200),
                       smooth_f=0.3, diverge_th=2.0)

    assert trace.diverged
    assert len(trace.lrs) < 200
    last = trace.smoothed[-1]
    assert not math.isfinite(last) or last > 2.0 * min(trace.smoothed[:-1])
    running = np.minimum.accumulate(trace.smoothed[:-1])
    assert all(s <= 2.0 * best for s, best in zip(trace.smoothed[:-1], running, strict=True))


def test_gradient_norm_is_that_of_the_batch_before_the_step():
    model, loader = tiny_problem()
    start = copy.deepcopy(model)
    x, y = next(loader)
    F.cross_entropy(start(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in start.parameters()]).norm().item()
    model, loader = tiny_problem()

    trace = range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, [0.1])

    assert trace.grad_norms[0] == pytest.approx(expected, rel=1e-6)


def test_with_a_score_the_test_smooths_the_score_after_each_step_not_the_batch_loss():
    model, loader = tiny_problem()
    x, y = torch.randn(5, 4), torch.randint(3, (5,))
    scored = []

    def score(m: nn.Module) -> float:
        scored.append(F.cross_entropy(m(x), y).item())
        return scored[-1]

    trace = range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                       lr_schedule(1e-3, 1e-1, 5), smooth_f=0.5, diverge_th=100.0,
                       score=score)

    assert trace.losses == scored and len(scored) == 5
    assert trace.batch_losses != trace.losses
    assert trace.smoothed[0] == scored[0]
    assert trace.smoothed[1] == pytest.approx(0.5 * scored[1] + 0.5 * scored[0], rel=1e-12)


def test_validation_split_is_carved_from_training_data_by_the_seed():
    x, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    (kept_x, kept_y), (held_x, held_y) = hold_out(x, y, 0.2, seed=3)

    assert (len(kept_x), len(held_x)) == (80, 20)
    assert sorted(torch.cat([kept_y, held_y]).tolist()) == list(range(100))  # a partition
    assert torch.equal(kept_x.flatten().long(), kept_y)  # rows stay with their labels
    again = hold_out(x, y, 0.2, seed=3)[1][1]
    other = hold_out(x, y, 0.2, seed=4)[1][1]
    assert torch.equal(again, held_y) and not torch.equal(other, held_y)


# A hand-made smoothed loss: steep drops at both ends (to be skipped) and, in between, the
# steepest central difference at index 5: (0.55 - 1.0) / 2 = -0.225.
CURVE = [10.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.55, 0.5, 0.45, 0.4, 5.0, -100.0]


def test_suggestion_is_the_steepest_descent_between_the_skipped_ends():
    assert steepest_descent(CURVE, skip_start=2, skip_end=2) == 5
    assert steepest_descent(CURVE, skip_start=0, skip_end=0) == 11  # the drop to -100
    assert steepest_descent(CURVE, skip_start=0, skip_end=2) == 0  # the drop from 10


def test_suggestion_needs_two_points_and_ignores_a_non_finite_tail():
    assert steepest_descent(CURVE, skip_start=6, skip_end=5) is None
    assert steepest_descent([3.0, 2.0, 1.0, math.inf], 0, 0) in (0, 1)
    assert steepest_descent([math.nan, math.nan], 0, 0) is None


LOSSES = [2.0, 1.0, 3.0, 0.5, 0.25]


def smoothed_by_the_rule(losses: list[float], smooth_f: float) -> list[float]:
    out = [losses[0]]
    for loss in losses[1:]:
        out.append(smooth_f * loss + (1 - smooth_f) * out[-1])
    return out


def test_smoothing_check_passes_the_rule_and_sees_a_wrong_start_or_factor():
    good = smoothed_by_the_rule(LOSSES, 0.3)

    assert smoothing_error(LOSSES, good, 0.3) <= lr_finder.RULE_TOLERANCE
    from_zero = [0.3 * LOSSES[0], *good[1:]]  # smoothing started at 0, not at the first loss
    assert smoothing_error(LOSSES, from_zero, 0.3) > 0.1
    assert smoothing_error(LOSSES, smoothed_by_the_rule(LOSSES, 0.7), 0.3) > 0.1
    assert smoothing_error(LOSSES, good[:-1], 0.3) == math.inf
    assert smoothing_error([*LOSSES, math.inf], [*good, 7.0], 0.3) == math.inf


def test_stop_rule_check_compares_with_the_best_loss_so_far_not_the_first():
    curve = [3.0, 1.0, 1.5, 4.0, 6.0]  # 4.0 > 2 x best (1.0): the rule stops there
    assert stop_rule_error(curve[:4], True, 10, 2.0) == 0.0
    assert stop_rule_error(curve, True, 10, 2.0) == 1.0  # ran one step past the stop
    assert stop_rule_error(curve[:4], False, 10, 2.0) == 1.0  # stopped but says it did not
    assert stop_rule_error([3.0, 2.0, 1.0], False, 3, 2.0) == 0.0  # ran the whole schedule
    assert stop_rule_error([3.0, 2.0], False, 3, 2.0) == 1.0  # stopped early for no reason
    assert stop_rule_error([3.0, 2.0, math.nan], True, 5, 2.0) == 0.0


def test_suggestion_check_recomputes_the_argmin_of_the_slope():
    assert suggestion_error(CURVE, 2, 2, steepest_descent(CURVE, 2, 2)) == 0.0
    steepest_ascent = 2 + int(np.argmax(np.gradient(CURVE[2:-2])))
    assert suggestion_error(CURVE, 2, 2, steepest_ascent) >= 1.0
    assert suggestion_error(CURVE, 6, 5, None) == 0.0
    assert suggestion_error(CURVE, 6, 5, 6) == math.inf
    assert suggestion_error(CURVE, 2, 2, None) == math.inf
    assert suggestion_error([3.0, 2.0, 1.0, math.inf], 0, 0,
                            steepest_descent([3.0, 2.0, 1.0, math.inf], 0, 0)) == 0.0


def test_a_suggestion_by_argmax_fails_the_runs_own_checks(ctx, monkeypatch):
    def steepest_ascent(smoothed, skip_start, skip_end):
        window = np.asarray(smoothed[skip_start:len(smoothed) - skip_end], dtype=float)
        return skip_start + int(np.nanargmax(np.gradient(window)))

    small = {"num_iter": 40, "skip_start": 5, "skip_end": 3, "validation_steps": 5}
    assert prepared(ctx, **small).run(ctx).failed_checks == []
    monkeypatch.setattr(lr_finder, "steepest_descent", steepest_ascent)
    ctx.generator.manual_seed(0)

    assert prepared(ctx, **small).run(ctx).failed_checks == ["suggestion"]


@pytest.mark.parametrize("step_mode", ["exp", "linear"])
def test_a_ramp_of_the_other_mode_fails_the_runs_schedule_check(ctx, monkeypatch, step_mode):
    other = {"exp": "linear", "linear": "exp"}[step_mode]
    real = lr_finder.lr_schedule
    small = {"num_iter": 30, "skip_start": 5, "skip_end": 3, "validation_steps": 5,
             "step_mode": step_mode}
    monkeypatch.setattr(lr_finder, "lr_schedule",
                        lambda start, end, num_iter, mode: real(start, end, num_iter, other))

    assert "schedule" in prepared(ctx, **small).run(ctx).failed_checks


def test_advice_is_chosen_on_the_validation_split_and_the_test_split_reported_apart(ctx):
    result = prepared(ctx, num_iter=40, skip_start=5, skip_end=3, validation_steps=30).run(ctx)
    metrics = result.metrics

    assert (metrics["data/train_size"], metrics["data/validation_size"],
            metrics["data/test_size"]) == (1150, 287, 360)  # 1437 training images, 20% held
    assert result.objective == metrics["validation/loss/suggested"]
    assert {"test/loss", "test/accuracy"} <= set(metrics)
    assert not [name for name in metrics if name.startswith("test/") and "lr_" in name]
    assert metrics["test/loss"] != metrics["validation/loss/suggested"]
    assert len(result.series["validation_loss"]) == len(result.series["batch_loss"])
    assert set(result.checks) == {"state_restored", "schedule", "smoothing", "stop_rule",
                                  "suggestion"}
    assert result.failed_checks == []


def test_the_test_split_is_evaluated_once_after_everything_was_chosen(ctx, monkeypatch):
    evaluated, original = [], lr_finder.evaluate_split

    def recording(model, workload, split):
        evaluated.append(split)
        return original(model, workload, split)

    monkeypatch.setattr(lr_finder, "evaluate_split", recording)
    result = prepared(ctx, num_iter=40, skip_start=5, skip_end=3, validation_steps=5).run(ctx)

    assert evaluated[-1] == "test" and evaluated.count("test") == 1
    assert set(evaluated[:-1]) == {"validation"}
    assert len(evaluated) == result.metrics["iterations_run"] + 3 + 1


def test_model_and_optimizer_state_are_restored_bit_for_bit():
    model, loader = tiny_problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = next(loader)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # Adam now holds step counts and moment buffers
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))

    trace = range_test(model, optimizer, loader, lr_schedule(1e-3, 100.0, 50))

    assert len(trace.lrs) > 5
    after = (model.state_dict(), optimizer.state_dict())
    assert state_mismatches(before, after) == 0
    for key, tensor in before[0].items():
        assert torch.equal(tensor, after[0][key])
    for index, buffers in before[1]["state"].items():
        for name, tensor in buffers.items():
            assert torch.equal(tensor, after[1]["state"][index][name])
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_state_mismatches_sees_one_changed_buffer_and_a_changed_lr():
    model, _ = tiny_problem()
    state = {"model": copy.deepcopy(model.state_dict()), "groups": [{"lr": 0.1}]}
    changed = copy.deepcopy(state)
    changed["model"]["bias"][0] = torch.nextafter(changed["model"]["bias"][0],
                                                  torch.tensor(math.inf))
    assert state_mismatches(state, changed) == 1
    changed["groups"][0]["lr"] = 0.2
    assert state_mismatches(state, changed) == 2
    assert state_mismatches(state, copy.deepcopy(state)) == 0


@pytest.mark.parametrize(("change", "key"), [
    ({"start_lr": 1.0, "end_lr": 1.0}, "experiment.start_lr"),
    ({"start_lr": -1e-3}, "experiment.start_lr"),
    ({"num_iter": 16}, "experiment.num_iter"),  # < skip_start + skip_end + 2 = 17
    ({"optimizer": "rmsprop"}, "experiment.optimizer"),
    ({"step_mode": "cubic"}, "experiment.step_mode"),
    ({"score": "test"}, "experiment.score"),
    ({"accumulation_steps": 0}, "experiment.accumulation_steps"),
    ({"amp": "yes"}, "experiment.amp"),
    ({"smooth_f": 0.0}, "experiment.smooth_f"),
    ({"diverge_th": 0.5}, "experiment.diverge_th"),
    ({"batch_size": 0}, "experiment.batch_size"),
    ({"validation_fraction": 0.9}, "experiment.validation_fraction"),
])
def test_bad_parameters_name_their_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}=") as raised:
        LrFinder(**change)
    assert "\n" not in str(raised.value)


def job(num: int, status: str = "COMPLETED", output_dir: str | None = None, **metrics) -> dict:
    params = {"experiment.optimizer": "sgd", "experiment.batch_size": "64",
              "model._target_": "gradkit.lib.models.mlp_for"} if metrics else {}
    return {"job": num, "experiment": "lr_finder", "overrides": f"job {num}", "status": status,
            "outcome": "", "params": params, "metrics": metrics, "output_dir": output_dir}


def test_sweep_figure_overlays_curves_and_survives_jobs_that_did_not_run(tmp_path):
    from gradkit.tracking.store import _write_series

    folder = tmp_path / "0"
    folder.mkdir()
    trace = RangeTest(lrs=[1e-3, 1e-2, 1e-1], smoothed=[2.3, 2.0, 1.5])
    _write_series(folder / "series.csv", {"lr": trace.lrs, "validation_loss": [2.3, 1.9, 1.2],
                                          "smoothed_loss": trace.smoothed})
    jobs = [job(0, output_dir=str(folder), suggested_lr=1e-2,
                **{"validation/accuracy/suggested": 0.9}),
            job(1, output_dir=str(tmp_path / "gone"), iterations_run=3.0),  # no suggestion
            job(2, "FAILED"), job(3, "NOT_RUN"), job(4, "KILLED")]

    fig = LrFinder.sweep_figure(jobs)

    curves, points = fig.axes[0], fig.axes[1]
    [curve] = [line for line in curves.lines if len(line.get_xdata()) == 3]
    assert list(curve.get_ydata()) == trace.smoothed
    assert [tick.get_text() for tick in points.get_yticklabels()] == [
        "#0 mlp_for sgd batch 64", "#1 mlp_for sgd batch 64"]
    assert "3 jobs failed" in points.get_title()
    assert LrFinder.sweep_figure([job(0, "FAILED"), job(1, "NOT_RUN")]) is None


def test_an_unknown_step_mode_names_the_allowed_ones():
    with pytest.raises(ConfigError) as raised:
        LrFinder(step_mode="cubic")
    assert str(raised.value).startswith("experiment.step_mode=")
    assert "exp" in str(raised.value) and "linear" in str(raised.value)


@pytest.mark.parametrize(("step_mode", "scale"), [("exp", "log"), ("linear", "linear")])
def test_the_figure_spreads_the_learning_rates_as_the_ramp_does(ctx, step_mode, scale):
    result = prepared(ctx, step_mode=step_mode, end_lr=1.0, num_iter=20, skip_start=2,
                      skip_end=2, validation_steps=2).run(ctx)

    loss_ax, grad_ax = result.figures["lr_finder"].axes[:2]
    assert loss_ax.get_xscale() == grad_ax.get_xscale() == scale
    assert grad_ax.get_yscale() == "log"
