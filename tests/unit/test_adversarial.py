"""Adversarial attacks: FGSM against the analytic input gradient, PGD bounds and the FGSM =
one-step PGD identity, the trained classifier and an
epsilon smoke sweep with parallel joblib workers."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import adversarial
from gradkit.experiments.adversarial import (
    Adversarial,
    Outcome,
    fgsm,
    input_gradient,
    pgd,
    pgd_iterates,
    start_spread,
)
from gradkit.lib.data import DIGIT_CLASSES, digits
from gradkit.lib.models import image_classifier
from gradkit.lib.training import TrainSpec, evaluate, trained_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(count: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = seeded(seed)
    return (torch.rand(count, 1, 8, 8, generator=generator),
            torch.randint(DIGIT_CLASSES, (count,), generator=generator))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default classifier (CNN, 8 epochs, Adam) on the seed-42 split, and its data."""
    folder = tmp_path_factory.mktemp("trained")
    ctx = RunContext(torch.device("cpu"), torch.float32, seeded(42), folder,
                     logging.getLogger("test"))
    data = digits(42)
    defaults = Adversarial()
    spec = TrainSpec(defaults.model, defaults.epochs, defaults.batch_size,
                     defaults.learning_rate, "adam", defaults.test_fraction, 42,
                     str(torch.float32), "cpu")
    model, _ = trained_classifier(spec, data, ctx)
    return model.requires_grad_(False), data


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
    expected = (x.flatten(1) + 0.1 * analytic.sign()).clamp(0, 1).reshape(x.shape)
    assert torch.equal(fgsm(model, x, y, 0.1), expected)


@pytest.mark.parametrize("epsilon", [0.0, 0.03, 0.3, 1.0])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_epsilon_ball_and_the_pixel_range(epsilon, random_start):
    model = image_classifier("cnn", generator=seeded(3))
    x, y = images()

    adversarial = pgd(model, x, y, epsilon, alpha=0.4 * epsilon + 0.01, steps=5,
                      random_start=random_start, generator=seeded(4))

    assert (adversarial - x).abs().max().item() <= epsilon + 1e-7
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    if epsilon == 0:
        assert torch.equal(adversarial, x)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fgsm_equals_one_step_pgd_bit_for_bit(kind):
    model = image_classifier(kind, generator=seeded(5))
    x, y = images(64)
    for epsilon in (0.01, 0.1, 0.25):
        assert torch.equal(fgsm(model, x, y, epsilon),
                           pgd(model, x, y, epsilon, epsilon, steps=1, random_start=False))


def test_pgd_random_start_comes_from_the_generator():
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    runs = [pgd(model, x, y, 0.1, 0.02, 3, generator=seeded(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_pgd_yields_its_start_then_each_iterate_the_last_being_pgd():
    model = image_classifier("mlp", generator=seeded(6))
    x, y = images()
    iterates = list(pgd_iterates(model, x, y, 0.1, 0.02, 3, generator=seeded(7)))

    assert len(iterates) == 4
    assert torch.equal(iterates[-1], pgd(model, x, y, 0.1, 0.02, 3, generator=seeded(7)))
    noise = torch.rand(x.shape, generator=seeded(7))
    assert torch.equal(iterates[0], (x + 0.1 * (2 * noise - 1)).clamp(0, 1))


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


def rescaled_start(factor):
    """PGD whose start's offset from x is scaled by `factor(epsilon)` (1 / epsilon: a start
    uniform in [-1, 1] around x, not scaled by epsilon), the iterates after it left as
    they were."""
    def attack(model, x, y, epsilon, alpha, steps, random_start=True, generator=None):
        iterates = pgd_iterates(model, x, y, epsilon, alpha, steps, random_start, generator)
        start = next(iterates)
        yield (x + factor(epsilon) * (start - x)).clamp(0, 1)
        yield from iterates
    return attack


FAST = {"model": "mlp", "epochs": 2, "examples": 2}


def test_a_start_outside_the_ball_fails_the_run_though_the_last_iterate_is_inside(
        ctx, monkeypatch):
    assert Adversarial(**FAST).run(ctx).failed_checks == []
    monkeypatch.setattr(adversarial, "pgd_iterates", rescaled_start(lambda e: 1 / e))

    result = Adversarial(**FAST).run(ctx)

    assert result.checks["epsilon_ball"].passed
    assert set(result.failed_checks) == {"iterates_in_ball", "random_start"}


def test_a_start_in_half_the_ball_fails_the_random_start_check(ctx, monkeypatch):
    monkeypatch.setattr(adversarial, "pgd_iterates", rescaled_start(lambda e: 0.5))

    assert Adversarial(**FAST).run(ctx).failed_checks == ["random_start"]


def test_the_attack_seed_alone_changes_the_random_start(ctx):
    runs = [Adversarial(**FAST, attack_seed=seed).run(ctx) for seed in (0, 0, 1)]

    assert runs[0].metrics == runs[1].metrics
    assert runs[0].metrics["l2"] != runs[2].metrics["l2"]
    assert runs[0].metrics["clean_accuracy"] == runs[2].metrics["clean_accuracy"]
    assert Adversarial(**FAST, random_start=False).run(ctx).checks.keys() == {
        "epsilon_ball", "fgsm_equals_one_step_pgd", "loss_raised", "iterates_in_ball"}


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_an_attack_that_descends_the_loss_fails_the_run(attack, ctx, monkeypatch):
    result = Adversarial(**FAST, attack=attack).run(ctx)
    assert result.metrics["attacked_loss"] > result.metrics["clean_loss"]
    assert result.failed_checks == []
    monkeypatch.setattr(adversarial, "input_gradient",
                        lambda model, x, y: -input_gradient(model, x, y))

    assert Adversarial(**FAST, attack=attack).run(ctx).failed_checks == ["loss_raised"]


def test_ball_check_fails_when_a_perturbation_leaves_the_ball():
    x, y = images(4)
    probabilities = torch.full((4, DIGIT_CLASSES), 0.1)
    inside = Outcome(x, y, (x + 0.05).clamp(0, 1), probabilities, probabilities)
    outside = Outcome(x, y, (x + 0.2).clamp(0, 1), probabilities, probabilities)
    attack = Adversarial(epsilon=0.1)

    assert attack.ball_check(inside, torch.float32).passed
    assert not attack.ball_check(outside, torch.float32).passed


def test_default_training_reaches_95_percent_on_the_test_split(trained):
    model, data = trained
    _, accuracy = evaluate(model, data.test_x, data.test_y)
    assert accuracy >= 0.95


def test_pgd_is_at_least_as_strong_as_fgsm_on_the_trained_model(trained):
    model, data = trained
    x, y = data.test_x, data.test_y
    for epsilon in (0.05, 0.1, 0.2):
        with_fgsm = (model(fgsm(model, x, y, epsilon)).argmax(1) == y).float().mean()
        with_pgd = (model(pgd(model, x, y, epsilon, 2.5 * epsilon / 10, 10,
                              generator=seeded(0))).argmax(1) == y).float().mean()
        assert with_pgd <= with_fgsm < 0.95


@pytest.mark.parametrize(("change", "key"), [
    ({"epsilon": -0.1}, "experiment.epsilon"),
    ({"epsilon": 1.5}, "experiment.epsilon"),
    ({"epsilon": float("nan")}, "experiment.epsilon"),
    ({"steps": 0}, "experiment.steps"),
    ({"alpha": 0.0}, "experiment.alpha"),
    ({"attack": "cw"}, "experiment.attack"),
    ({"model": "resnet"}, "experiment.model"),
    ({"cache": "yes"}, "experiment.cache"),
    ({"random_start": 1}, "experiment.random_start"),
    ({"test_fraction": 0.9}, "experiment.test_fraction"),
    ({"attack_seed": -1}, "experiment.attack_seed"),
])
def test_bad_parameters_name_their_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}=") as raised:
        Adversarial(**change)
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
            job(1, attack="fgsm", epsilon=0.1, robust=0.6),
            job(2, attack="pgd", epsilon=0.1, robust=0.5),
            job(3, attack="pgd", epsilon=0.0, robust=0.98),
            job(4, "FAILED"), job(5, "NOT_RUN")]

    ax = Adversarial.sweep_figure(jobs).axes[0]

    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.lines}
    assert lines["FGSM"] == ([0.0, 0.1], [0.98, 0.6])
    assert lines["PGD"] == ([0.0, 0.1], [0.98, 0.5])
    assert "2 not completed" in ax.get_title()
    assert Adversarial.sweep_figure([job(0, "KILLED")]) is None
