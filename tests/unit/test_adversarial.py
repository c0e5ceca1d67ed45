"""Adversarial attacks: FGSM against the analytic input gradient, every attack's ball and box,
PGD-L2's step in closed form, APGD's schedule against Croce & Hein's formula, targeted attacks,
the run's checks failing on spoilt attacks, and bad input refused in one line."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from gradkit.core.components import Choice, Components
from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import adversarial
from gradkit.experiments.adversarial import (
    ATTACKS,
    NORMS,
    Adversarial,
    apgd,
    apgd_attack,
    apgd_checkpoints,
    apgd_step,
    ball_excess,
    fgsm,
    input_gradient,
    pgd,
    pgd_iterates,
    pgd_l2_iterates,
    project_linf,
    start_spread,
    training_components,
)
from gradkit.lib.data import DIGIT_CLASSES
from gradkit.lib.models import image_classifier
from gradkit.lib.training import TrainSpec, trained_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread

BOXES = [(0.0, 1.0), (-1.0, 2.0)]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(count: int = 16, seed: int = 1, box=(0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = seeded(seed)
    low, high = box
    return (low + (high - low) * torch.rand(count, 1, 8, 8, generator=generator),
            torch.randint(DIGIT_CLASSES, (count,), generator=generator))


def attacked(attack: str, model, x, y, epsilon, box=(0.0, 1.0), targeted=False, steps=5):
    """`attack`'s adversarial batch, as the experiment computes it."""
    if attack == "fgsm":
        return fgsm(model, x, y, epsilon, box, targeted)
    if attack.startswith("apgd"):
        return apgd_attack(model, x, y, epsilon, steps, NORMS[attack], seeded(4), box, targeted)
    walk = pgd_iterates if attack == "pgd" else pgd_l2_iterates
    *_, final = walk(model, x, y, epsilon, 2.5 * epsilon / steps, steps, True, seeded(4), box,
                     targeted)
    return final


@pytest.fixture(autouse=True)
def _no_drawing(monkeypatch):
    """Blank figures: these tests read checks and metrics (test_pngs draws the real ones), and
    drawing was half of each run's time."""
    monkeypatch.setattr(Adversarial, "plot_examples", lambda self, *args: Figure())
    monkeypatch.setattr(Adversarial, "plot_confusion", lambda self, *args: Figure())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weight cache for this module's runs."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture
def ctx(ctx, weights) -> RunContext:
    """The test's context with the module's weight cache: these tests attack a classifier,
    whose training (the same for every run of one model and setting) is done once."""
    return dataclasses.replace(ctx, cache_dir=weights)


def prepared(ctx, **parameters) -> Adversarial:
    experiment = Adversarial(**parameters)
    experiment.prepare(ctx)
    return experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default classifier (CNN, 8 epochs, Adam) on the seed-42 split, and its test split."""
    folder = tmp_path_factory.mktemp("trained")
    ctx = RunContext(torch.device("cpu"), torch.float32, seeded(42), folder,
                     logging.getLogger("test"))
    experiment = prepared(ctx)
    spec = TrainSpec(training_components(ctx, 0.2), 8, 64, 5e-3, "adam", 42,
                     str(torch.float32), "cpu")
    model, _ = trained_classifier(spec, experiment.workload, None)
    return model.requires_grad_(False), experiment.workload.data.tensors("test")


def test_fgsm_follows_the_sign_of_the_analytic_input_gradient():
    """Linear logits z = W x + b: d CE / dx = W^T (softmax(z) - onehot(y))."""
    linear = nn.Linear(64, DIGIT_CLASSES)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(DIGIT_CLASSES, 64, generator=seeded(2)))
    model = nn.Sequential(nn.Flatten(), linear)
    x, y = images()
    probabilities = torch.softmax(linear(x.flatten(1)), dim=1)
    analytic = (probabilities - F.one_hot(y, DIGIT_CLASSES)) @ linear.weight

    gradient = input_gradient(model, x, y).flatten(1)
    torch.testing.assert_close(gradient, analytic.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(input_gradient(model, x, y, targeted=True), -input_gradient(model, x, y))
    expected = (x.flatten(1) + 0.1 * analytic.sign()).clamp(0, 1).reshape(x.shape)
    assert torch.equal(fgsm(model, x, y, 0.1), expected)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("epsilon", [0.0, 0.03, 0.3, 1.0])
def test_every_attack_stays_in_its_ball_and_the_box(attack, box, epsilon):
    model = image_classifier("cnn", generator=seeded(3))
    x, y = images(box=box)

    adversarial = attacked(attack, model, x, y, epsilon, box)

    delta = (adversarial - x).flatten(1)
    size = (delta.abs().amax(dim=1) if NORMS[attack] == "linf"
            else torch.linalg.vector_norm(delta, dim=1))
    assert size.max().item() <= epsilon * (1 + 1e-6) + 1e-7
    assert adversarial.min().item() >= box[0] and adversarial.max().item() <= box[1]
    assert ball_excess(x, adversarial, epsilon, NORMS[attack], box) <= 1e-6
    if epsilon == 0:
        assert torch.equal(adversarial, x)


def test_ball_excess_sees_a_point_outside_the_ball_or_the_box():
    x, _ = images(4)
    assert ball_excess(x, (x + 0.2).clamp(0, 1), 0.1) == pytest.approx(0.1, abs=1e-6)
    outside_l2 = x + 0.1  # L-inf 0.1, L2 0.8 over 64 pixels
    assert ball_excess(x, outside_l2, 0.5, "l2", (-1.0, 2.0)) == pytest.approx(0.3, abs=1e-5)
    assert ball_excess(x, x - 0.5, 1.0, "linf", (0.0, 1.0)) > 0  # below the box


def test_default_training_reaches_95_percent_on_the_test_split(trained):
    model, (x, y) = trained
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.95
    assert len(y) == 360


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_raises_the_loss_and_lowers_the_accuracy(attack, trained):
    model, (x, y) = trained
    epsilon = 1.0 if NORMS[attack] == "l2" else 0.1
    adversarial = attacked(attack, model, x, y, epsilon, steps=10)
    with torch.no_grad():
        clean, after = model(x), model(adversarial)
    assert F.cross_entropy(after, y) > F.cross_entropy(clean, y) + 0.3
    clean_accuracy = (clean.argmax(1) == y).float().mean()
    assert (after.argmax(1) == y).float().mean() < clean_accuracy - 0.1


def test_pgd_is_at_least_as_strong_as_fgsm_and_apgd_as_pgd_on_the_trained_model(trained):
    model, (x, y) = trained

    def accuracy(attack, epsilon, steps=10):
        adversarial = attacked(attack, model, x, y, epsilon, steps=steps)
        return (model(adversarial).argmax(1) == y).float().mean().item()

    for epsilon in (0.05, 0.1, 0.2):
        assert accuracy("pgd", epsilon) <= accuracy("fgsm", epsilon) < 0.95
    assert accuracy("apgd", 0.1, steps=100) < accuracy("pgd", 0.1) - 0.01  # 0.533, 0.558
    assert accuracy("apgd", 0.2, steps=100) <= accuracy("pgd", 0.2)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_returns_a_fooling_point_wherever_one_was_found(norm, trained):
    """Fooled at some iterate (not robust): a fooling point; robust: the point of highest loss
    (not the start, which `best_adversarial` holds there)."""
    model, (x, y) = trained
    run = apgd(model, x, y, 0.3 if norm == "l2" else 0.04, 10, norm, seeded(0))
    wrong = model(run.adversarial).argmax(1) != y
    assert torch.equal(wrong, ~run.robust)
    assert torch.equal(run.adversarial[run.robust], run.best[run.robust])


def test_one_pgd_l2_step_without_start_is_the_normalised_gradient_step():
    model = image_classifier("cnn", generator=seeded(5))
    x, y = images(32)
    x = 0.25 + 0.5 * x  # away from the box, so only the ball can bind
    grad = input_gradient(model, x, y)
    unit = grad / torch.linalg.vector_norm(grad.flatten(1), dim=1).reshape(-1, 1, 1, 1)

    *_, inside = pgd_l2_iterates(model, x, y, 0.5, 0.2, 1, random_start=False)
    *_, capped = pgd_l2_iterates(model, x, y, 0.1, 0.2, 1, random_start=False)

    torch.testing.assert_close(inside, x + 0.2 * unit, rtol=0, atol=1e-6)
    torch.testing.assert_close(capped, x + 0.1 * unit, rtol=0, atol=1e-6)  # projected


def test_pgd_l2_start_is_a_gaussian_direction_at_a_uniform_radius():
    x = torch.full((4000, 1, 8, 8), 0.5)
    start = next(pgd_l2_iterates(None, x, None, 0.2, 0.1, 0, generator=seeded(6)))
    radii = torch.linalg.vector_norm((start - x).flatten(1), dim=1) / 0.2
    assert radii.max() <= 1 + 1e-6
    assert radii.mean().item() == pytest.approx(0.5, abs=5 * (1 / 12 / 4000) ** 0.5)


@pytest.mark.parametrize("steps", [100, 200, 300])
def test_apgd_checkpoints_follow_croce_and_heins_formula(steps):
    """w_j = p_j N, p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert apgd_checkpoints(steps) == [round(q * steps) for q in p[1:]]
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_reviews_step_sizes_at_its_checkpoints_only(monkeypatch):
    reviews = []
    real = adversarial.oscillating

    def spy(history, i, window):
        reviews.append((i + 1, window))
        return real(history, i, window)

    monkeypatch.setattr(adversarial, "oscillating", spy)
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    apgd(model, x, y, 0.1, 100, generator=seeded(7))
    points = apgd_checkpoints(100)
    assert reviews == list(zip(points, [22, 19, 16, 13, 10, 7, 6, 6], strict=True))


def test_an_apgd_step_mixes_the_new_step_and_the_last_one_by_momentum():
    """x = 0.5, epsilon 0.1, at 0.55 from 0.5, gradient -1, step 0.2: z = P(0.35) = 0.4 and
    P(0.55 + 0.75 (0.4 - 0.55) + 0.25 (0.55 - 0.5)) = 0.45; without momentum 0.4."""
    x, current, previous = (torch.tensor([[value]]) for value in (0.5, 0.55, 0.5))
    grad, step = torch.tensor([[-1.0]]), torch.tensor([[0.2]])
    for momentum, expected in ((0.75, 0.45), (1.0, 0.4)):
        moved = apgd_step(x, current, previous, grad, step, momentum, 0.1, "linf", (0.0, 1.0))
        assert moved.item() == pytest.approx(expected, abs=1e-6)


def test_apgd_halves_step_sizes_at_checkpoints_with_momentum_after_the_first_step(
        monkeypatch):
    """Constant logits: the loss never rises, so every checkpoint halves every step size."""
    calls = []
    real = adversarial.apgd_step

    def spy(x, current, previous, grad, step_size, momentum, *args):
        calls.append((step_size.unique().tolist(), momentum))
        return real(x, current, previous, grad, step_size, momentum, *args)

    monkeypatch.setattr(adversarial, "apgd_step", spy)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, DIGIT_CLASSES))
    nn.init.zeros_(flat[1].weight)
    x, y = images()
    apgd(flat, x, y, 0.1, 100, generator=seeded(7))

    halvings = [sum(at < step for at in apgd_checkpoints(100)) for step in range(1, 101)]
    assert [sizes for sizes, _ in calls] == [[pytest.approx(0.2 / 2**h)] for h in halvings]
    assert [momentum for _, momentum in calls] == [1.0] + [0.75] * 99


def test_apgd_restarts_a_reduced_example_from_its_best_point(monkeypatch):
    """Every example reduced at the first checkpoint: the next step starts from the point of
    highest loss so far (the first of equals), not from the last iterate."""
    points, losses, currents = [], [], []
    real_step, real_losses = adversarial.apgd_step, adversarial.example_losses

    def step(x, current, *args):
        currents.append(current.clone())
        return real_step(x, current, *args)

    def scored(model, point, y, targeted):
        found = real_losses(model, point, y, targeted)
        points.append(point.clone())
        losses.append(found[0])
        return found

    monkeypatch.setattr(adversarial, "apgd_step", step)
    monkeypatch.setattr(adversarial, "example_losses", scored)
    monkeypatch.setattr(adversarial, "oscillating",
                        lambda history, i, window: torch.ones(history.shape[1], dtype=torch.bool))
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    apgd(model, x, y, 0.1, 100, generator=seeded(7))

    first = apgd_checkpoints(100)[0]  # points[0] is the start, points[first] the last iterate
    best = torch.stack(losses[:first + 1]).argmax(dim=0)
    expected = torch.stack([points[b][n] for n, b in enumerate(best.tolist())])
    assert torch.equal(currents[first], expected)
    assert not torch.equal(currents[first], points[first])


def test_one_apgd_step_is_a_projected_sign_step_of_twice_epsilon():
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    t = 2 * torch.rand(x.shape, generator=seeded(9)) - 1
    start = (x + 0.1 * t / t.flatten(1).abs().amax(1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    step = project_linf(x, start + 0.2 * input_gradient(model, start, y).sign(), 0.1, (0, 1))

    run = apgd(model, x, y, 0.1, 1, generator=seeded(9))

    start_loss = F.cross_entropy(model(start), y, reduction="none")
    step_loss = F.cross_entropy(model(step), y, reduction="none")
    expected = torch.where((step_loss > start_loss).reshape(-1, 1, 1, 1), step, start)
    torch.testing.assert_close(run.best, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd_l2", "apgd"])
def test_targeted_attacks_move_predictions_to_the_target(attack, trained):
    model, (x, y) = trained
    keep = y != 3
    x, y = x[keep], y[keep]
    targets = torch.full_like(y, 3)
    epsilon = 2.0 if NORMS[attack] == "l2" else 0.3
    steps = 10
    hit = {}
    for aim, targeted in ((targets, True), (y, False)):
        adversarial = attacked(attack, model, x, aim, epsilon, targeted=targeted, steps=steps)
        hit[targeted] = (model(adversarial).argmax(1) == 3).float().mean().item()
    assert hit[True] > hit[False] + 0.2
    assert hit[True] > (0.3 if attack == "fgsm" else 0.9)


def test_random_targets_are_other_classes_drawn_from_the_attack_seed():
    experiment = Adversarial(targeted=True)
    y = torch.arange(10).repeat(50)
    first, again = (experiment.targets(y, 10, seeded(3)) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, experiment.targets(y, 10, seeded(4)))
    assert (first != y).all() and set(first.tolist()) == set(range(10))
    assert Adversarial().targets(y, 10, seeded(3)) is None
    fixed = Adversarial(targeted=True, target_class=7).targets(y, 10, seeded(3))
    assert (fixed == 7).all()


def test_pgd_yields_its_start_then_each_iterate_the_last_being_pgd():
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    iterates = list(pgd_iterates(model, x, y, 0.1, 0.02, 3, generator=seeded(7)))

    assert len(iterates) == 4
    assert torch.equal(iterates[-1], pgd(model, x, y, 0.1, 0.02, 3, generator=seeded(7)))
    noise = torch.rand(x.shape, generator=seeded(7))
    assert torch.equal(iterates[0], (x + 0.1 * (2 * noise - 1)).clamp(0, 1))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fgsm_equals_one_step_pgd_bit_for_bit(kind):
    model = image_classifier(kind, generator=seeded(5))
    x, y = images(64)
    for epsilon in (0.01, 0.1, 0.25):
        assert torch.equal(fgsm(model, x, y, epsilon),
                           pgd(model, x, y, epsilon, epsilon, steps=1, random_start=False))


def test_start_spread_is_one_half_for_a_uniform_start_and_sees_a_wrong_scale():
    x = torch.full((4000,), 0.5)
    noise = torch.rand(x.shape, generator=seeded(8))
    uniform, count = start_spread(x, x + 0.1 * (2 * noise - 1), 0.1)
    assert count == 4000
    assert abs(uniform - 0.5) < 5 * (1 / 12 / count) ** 0.5
    assert start_spread(x, x + 0.05 * (2 * noise - 1), 0.1)[0] == pytest.approx(0.25, abs=0.02)
    assert start_spread(x, x, 0.1)[0] == 0.0  # no random start at all
    edge = torch.tensor([0.0, 0.05, 0.95, 1.0, 0.5])
    assert start_spread(edge, edge, 0.1)[1] == 1  # only 0.5 is free of the clipping
    assert start_spread(edge, edge, 0.0)[1] == 0
    assert start_spread(edge, edge, 0.1, (0.0, 2.0))[1] == 3  # 0.95 and 1.0 are free there


def rescaled_start(walk, factor):
    """An attack whose start's offset from x is scaled by `factor(epsilon)`, the iterates
    after it left as they were."""
    def attack(model, x, y, epsilon, *args):
        iterates = walk(model, x, y, epsilon, *args)
        start = next(iterates)
        yield (x + factor(epsilon) * (start - x)).clamp(0, 1)
        yield from iterates
    return attack


FAST = {"epochs": 2, "examples": 2}


@pytest.mark.parametrize(("attack", "walk", "epsilon"), [
    ("pgd", "pgd_iterates", 0.1), ("pgd_l2", "pgd_l2_iterates", 1.0)])
def test_a_start_outside_the_ball_fails_the_run_though_the_last_iterate_is_inside(
        attack, walk, epsilon, ctx, monkeypatch):
    assert prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx).failed_checks == []
    monkeypatch.setattr(adversarial, walk,
                        rescaled_start(getattr(adversarial, walk), lambda e: 3 / e))

    result = prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx)

    assert result.checks["epsilon_ball"].passed
    assert "iterates_in_ball" in result.failed_checks


def test_a_start_in_half_the_ball_fails_the_random_start_check(ctx, monkeypatch):
    monkeypatch.setattr(adversarial, "pgd_iterates",
                        rescaled_start(adversarial.pgd_iterates, lambda e: 0.5))

    assert prepared(ctx, **FAST).run(ctx).failed_checks == ["random_start"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attack_leaving_its_ball_fails_the_run(attack, ctx, monkeypatch):
    real = adversarial.Adversarial.perturb

    def overshoot(self, model, x, labels, *args):
        return (x + 2 * (real(self, model, x, labels, *args) - x)).clamp(0, 1)

    epsilon = 0.5 if NORMS[attack] == "l2" else 0.05
    assert prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx).failed_checks == []
    monkeypatch.setattr(adversarial.Adversarial, "perturb", overshoot)

    result = prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx)

    assert "epsilon_ball" in result.failed_checks


def test_the_attack_seed_alone_changes_the_random_start(ctx):
    runs = [prepared(ctx, **FAST, attack_seed=seed).run(ctx) for seed in (0, 0, 1)]

    assert runs[0].metrics == runs[1].metrics
    assert runs[0].metrics["l2"] != runs[2].metrics["l2"]
    assert runs[0].metrics["clean_accuracy"] == runs[2].metrics["clean_accuracy"]
    assert prepared(ctx, **FAST, random_start=False).run(ctx).checks.keys() == {
        "epsilon_ball", "fgsm_equals_one_step_pgd", "loss_raised", "iterates_in_ball"}


def test_the_attack_in_batches_gives_the_metrics_of_one_batch(ctx):
    whole = prepared(ctx, **FAST, attack="fgsm").run(ctx)
    batched = prepared(ctx, **FAST, attack="fgsm", attack_batch_size=50).run(ctx)

    for name, value in whole.metrics.items():
        assert batched.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert batched.summary["test_size"] == whole.summary["test_size"] == 360


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attack_that_descends_the_loss_fails_the_run(attack, ctx, monkeypatch):
    epsilon = 1.0 if NORMS[attack] == "l2" else 0.1
    result = prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx)
    assert result.metrics["attacked_loss"] > result.metrics["clean_loss"]
    assert result.failed_checks == []
    real = adversarial.input_gradient
    monkeypatch.setattr(adversarial, "input_gradient",
                        lambda model, x, y, targeted=False: -real(model, x, y, targeted))
    spoilt = adversarial.example_losses

    def ascending(model, x, y, targeted):
        losses, grad, resisting = spoilt(model, x, y, targeted)
        return -losses, -grad, resisting
    monkeypatch.setattr(adversarial, "example_losses", ascending)

    assert prepared(ctx, **FAST, attack=attack, epsilon=epsilon).run(ctx).failed_checks == [
        "loss_raised"]


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_a_targeted_run_reports_its_success_and_fails_when_it_moves_away(
        attack, ctx, monkeypatch):
    result = prepared(ctx, **FAST, attack=attack, epsilon=0.3, targeted=True).run(ctx)
    assert result.failed_checks == []
    assert result.metrics["targeted_success_rate"] > 0.5
    assert result.metrics["attacked_target_loss"] < result.metrics["clean_target_loss"]
    real, losses = adversarial.input_gradient, adversarial.example_losses
    monkeypatch.setattr(adversarial, "input_gradient",
                        lambda model, x, y, targeted=False: real(model, x, y, not targeted))
    monkeypatch.setattr(adversarial, "example_losses",
                        lambda model, x, y, targeted: losses(model, x, y, not targeted))

    spoilt = prepared(ctx, **FAST, attack=attack, epsilon=0.3, targeted=True).run(ctx)

    assert spoilt.failed_checks == ["target_loss_lowered"]


def test_another_model_is_trained_and_attacked(ctx):
    mlp = Choice("model", "mlp", {"_target_": "gradkit.lib.models.mlp_for", "hidden": [64]})
    chosen = dataclasses.replace(ctx, components=Components(model=mlp))

    result = prepared(chosen, **FAST).run(chosen)
    own = prepared(ctx, **FAST).run(ctx)

    assert result.failed_checks == []
    assert result.summary["model"] == "mlp" and own.summary["model"] == "own"
    assert result.summary["parameters"] == 64 * 64 + 64 + 64 * 10 + 10
    assert result.metrics["clean_accuracy"] != own.metrics["clean_accuracy"]


def test_another_init_of_the_same_architecture_trains_its_own_weights(ctx, tmp_path):
    """Same repr, another config: the cache key tells them apart."""
    ctx = dataclasses.replace(ctx, cache_dir=tmp_path / "cache")
    entries = []
    for init in ("xavier_normal", "kaiming_normal", "xavier_normal"):
        mlp = Choice("model", "mlp", {"_target_": "gradkit.lib.models.mlp_for", "hidden": [64],
                                      "init": init})
        chosen = dataclasses.replace(ctx, components=Components(model=mlp))
        result = prepared(chosen, **FAST, attack="fgsm").run(chosen)
        entries.append((result.summary["cache"], result.summary["cache_entry"]))

    assert [status for status, _ in entries] == ["miss", "miss", "hit"]
    assert entries[0][1] == entries[2][1] != entries[1][1]


@pytest.mark.parametrize(("change", "key"), [
    ({"epsilon": -0.1}, "experiment.epsilon"),
    ({"epsilon": 1.5}, "experiment.epsilon"),
    ({"epsilon": 2.5, "input_range": [-1, 1]}, "experiment.epsilon"),
    ({"epsilon": float("nan")}, "experiment.epsilon"),
    ({"steps": 0}, "experiment.steps"),
    ({"alpha": 0.0}, "experiment.alpha"),
    ({"attack": "cw"}, "experiment.attack"),
    ({"cache": "yes"}, "experiment.cache"),
    ({"random_start": 1}, "experiment.random_start"),
    ({"targeted": "yes"}, "experiment.targeted"),
    ({"targeted": True, "target_class": -1}, "experiment.target_class"),
    ({"target_class": 3}, "experiment.target_class"),
    ({"input_range": [1.0, 0.0]}, "experiment.input_range"),
    ({"input_range": [0.0]}, "experiment.input_range"),
    ({"test_fraction": 0.9}, "experiment.test_fraction"),
    ({"attack_batch_size": 0}, "experiment.attack_batch_size"),
    ({"attack_seed": -1}, "experiment.attack_seed"),
])
def test_bad_parameters_name_their_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}=") as raised:
        Adversarial(**change)
    assert "\n" not in str(raised.value)


def test_an_l2_radius_may_exceed_the_box_width():
    assert Adversarial(attack="pgd_l2", epsilon=2.5).epsilon == 2.5


@pytest.mark.parametrize(("change", "message"), [
    ({"targeted": True, "target_class": 10},
     "experiment.target_class=10 must be < 10 (the classes of data=own)"),
    ({"input_range": [0.0, 0.5]},
     "experiment.input_range=[0.0, 0.5] does not hold data=own: its train inputs span [0, 1]"),
])
def test_prepare_refuses_what_the_data_cannot_serve(change, message, ctx):
    with pytest.raises(ConfigError) as raised:
        Adversarial(**change).prepare(ctx)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_default_alpha_is_two_and_a_half_epsilon_over_steps():
    assert Adversarial(epsilon=0.2, steps=4).alpha == pytest.approx(0.125)
    assert Adversarial(epsilon=0.2, steps=4, alpha=0.01).alpha == 0.01


def test_sweep_figure_draws_one_line_per_attack_and_skips_jobs_without_metrics():
    def job(num, status="COMPLETED", attack="fgsm", epsilon=0.1, robust=None):
        logged = robust is not None
        return {"job": num, "experiment": "adversarial", "overrides": "", "status": status,
                "outcome": "",
                "params": {"experiment.attack": attack,
                           "experiment.epsilon": str(epsilon)} if logged else {},
                "metrics": {"robust_accuracy": robust, "clean_accuracy": 0.98} if logged
                else {}}

    jobs = [job(0, attack="fgsm", epsilon=0.0, robust=0.98),
            job(1, attack="pgd_l2", epsilon=0.1, robust=0.6),
            job(2, attack="apgd", epsilon=0.1, robust=0.5),
            job(3, attack="apgd", epsilon=0.0, robust=0.98),
            job(6, attack="pgd_l2", epsilon=0.0, robust=0.98),
            job(4, "FAILED"), job(5, "NOT_RUN")]

    ax = Adversarial.sweep_figure(jobs).axes[0]

    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.lines}
    assert lines["FGSM (L-inf)"] == ([0.0], [0.98])
    assert lines["PGD_L2 (L2)"] == ([0.0, 0.1], [0.98, 0.6])
    assert lines["APGD (L-inf)"] == ([0.0, 0.1], [0.98, 0.5])
    assert "2 not completed" in ax.get_title()
    assert Adversarial.sweep_figure([job(0, "KILLED")]) is None
