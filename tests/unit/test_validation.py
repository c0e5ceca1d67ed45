"""Bad values fail early with a ConfigError whose message names the key."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from gradkit.core import settings as runtime
from gradkit.core.validation import ConfigError, choice, integer, number, vector
from gradkit.experiments.basic_gradients import BasicGradients
from gradkit.experiments.computational_graph import ComputationalGraph
from gradkit.experiments.jacobian import Jacobian


@pytest.mark.parametrize(("call", "expected"), [
    (lambda: number("k", 3), 3.0),
    (lambda: number("k", -2.5), -2.5),
    (lambda: number("k", 0.5, positive=True, minimum=0.1, maximum=1), 0.5),
    (lambda: number("k", 1, minimum=1, maximum=1), 1.0),
    (lambda: integer("k", 0), 0),
    (lambda: integer("k", 7, minimum=7), 7),
    (lambda: vector("k", [1, 2.5], 2), (1.0, 2.5)),
    (lambda: vector("k", (0, -1, 3), 3), (0.0, -1.0, 3.0)),
    (lambda: choice("k", "b", ["a", "b"]), "b"),
])
def test_helpers_accept_good_values(call, expected):
    found = call()
    assert found == expected
    assert type(found) is type(expected)


@pytest.mark.parametrize(("call", "key"), [
    (lambda: number("lr", "0.1"), "lr"),
    (lambda: number("lr", None), "lr"),
    (lambda: number("lr", True), "lr"),
    (lambda: number("lr", [1.0]), "lr"),
    (lambda: number("lr", math.nan), "lr"),
    (lambda: number("lr", math.inf), "lr"),
    (lambda: number("lr", -math.inf), "lr"),
    (lambda: number("lr", 0, positive=True), "lr"),
    (lambda: number("lr", -1e-9, positive=True), "lr"),
    (lambda: number("lr", 0.5, minimum=1), "lr"),
    (lambda: number("lr", 2, maximum=1), "lr"),
    (lambda: integer("steps", 1.0), "steps"),
    (lambda: integer("steps", "3"), "steps"),
    (lambda: integer("steps", False), "steps"),
    (lambda: integer("steps", -1), "steps"),
    (lambda: integer("steps", 4, minimum=5), "steps"),
    (lambda: vector("start", [1.0], 2), "start"),
    (lambda: vector("start", [1.0, 2.0, 3.0], 2), "start"),
    (lambda: vector("start", "12", 2), "start"),
    (lambda: vector("start", 1.0, 2), "start"),
    (lambda: vector("start", None, 2), "start"),
    (lambda: vector("start", [1.0, "x"], 2), "start[1]"),
    (lambda: vector("start", [math.nan, 1.0], 2), "start[0]"),
    (lambda: choice("dtype", "float16", ["float32", "float64"]), "dtype"),
])
def test_helpers_reject_bad_values_naming_the_key(call, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}="):
        call()


def test_choice_lists_what_is_allowed():
    with pytest.raises(ConfigError, match="float32, float64"):
        choice("dtype", "half", ["float32", "float64"])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("make", "key"), [
    (lambda: BasicGradients(x="abc"), "experiment.x"),
    (lambda: BasicGradients(x=True), "experiment.x"),
    (lambda: BasicGradients(x=None), "experiment.x"),
    (lambda: BasicGradients(x=math.nan), "experiment.x"),
    (lambda: BasicGradients(a=math.inf), "experiment.a"),
    (lambda: BasicGradients(b=[1.0]), "experiment.b"),
    (lambda: BasicGradients(c=-math.inf), "experiment.c"),
    (lambda: ComputationalGraph(x="2"), "experiment.x"),
    (lambda: ComputationalGraph(x=math.inf), "experiment.x"),
    (lambda: Jacobian(point=[1, 2]), "experiment.point"),
    (lambda: Jacobian(point=[1, 2, 3, 4]), "experiment.point"),
    (lambda: Jacobian(point="123"), "experiment.point"),
    (lambda: Jacobian(point=1.0), "experiment.point"),
    (lambda: Jacobian(point=[1, math.nan, 3]), "experiment.point[1]"),
    (lambda: Jacobian(point=[1, 2, "three"]), "experiment.point[2]"),
    (lambda: Jacobian(point=[True, 2, 3]), "experiment.point[0]"),
])
def test_constructors_reject_bad_values_naming_the_key(make, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}="):
        make()


def test_constructors_store_validated_floats():
    assert BasicGradients(a=2, b=-1, c=0, x=3).x == 3.0
    assert Jacobian(point=[1, 2, 3]).point == (1.0, 2.0, 3.0)
    assert isinstance(ComputationalGraph(x=1).x, float)


def test_cpu_device_resolves():
    assert runtime.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_is_refused_without_cuda(name):
    with pytest.raises(ConfigError, match=r"^device=.*CUDA is not available"):
        runtime.resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resolves_with_cuda():
    assert runtime.resolve_device("cuda").type == "cuda"


@pytest.mark.parametrize("name", ["banana", "", "cpu:x", "meta"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ConfigError, match=r"^device="):
        runtime.resolve_device(name)


@pytest.mark.parametrize(("threads", "parallel_jobs", "expected"), [
    ("auto", 2, 4),      # 8 cores shared by 2 jobs
    ("auto", 3, 2),
    ("auto", 16, 1),     # never below one thread
    (1, 4, 1),
    (3, None, 3),        # an explicit count wins
])
def test_resolve_threads(threads, parallel_jobs, expected, monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    assert runtime.resolve_threads(threads, parallel_jobs) == expected


def test_auto_threads_outside_a_parallel_sweep_keep_torch_default():
    assert runtime.resolve_threads("auto", None) == torch.get_num_threads()


@pytest.mark.parametrize("threads", [0, -2, True, 2.0, "four", None])
def test_resolve_threads_rejects(threads):
    with pytest.raises(ConfigError, match=r"^threads="):
        runtime.resolve_threads(threads, None)


def global_config(**changes):
    keys = {"device": "cpu", "dtype": "float64", "threads": 1, "seed": 7, "deterministic": False,
            "plotting": SimpleNamespace(dpi=100, figures=True),
            "tracking": SimpleNamespace(max_series_points=200)}
    return SimpleNamespace(**{**keys, **changes})


@pytest.fixture
def _keep_torch_threads():
    """build_context sets torch's global thread count: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("_keep_torch_threads")
def test_build_context(tmp_path):
    settings = runtime.read_settings(global_config(threads=1))
    ctx = runtime.build_context(settings, tmp_path)

    assert (ctx.device, ctx.dtype, ctx.output_dir) == (torch.device("cpu"), torch.float64,
                                                       tmp_path)
    assert (settings.dpi, settings.figures, settings.max_series_points) == (100, True, 200)
    assert torch.get_num_threads() == 1
    assert ctx.generator.initial_seed() == 7
    expected = torch.Generator().manual_seed(7)
    assert torch.equal(torch.rand(3, generator=ctx.generator), torch.rand(3, generator=expected))


@pytest.mark.parametrize(("change", "key"), [
    ({"device": "banana"}, "device"),
    ({"dtype": "float16"}, "dtype"),
    ({"seed": "abc"}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"threads": 0}, "threads"),
    ({"threads": "many"}, "threads"),
    ({"deterministic": "no"}, "deterministic"),
    ({"deterministic": "false"}, "deterministic"),
    ({"deterministic": 0}, "deterministic"),
    ({"plotting": SimpleNamespace(dpi="abc", figures=True)}, "plotting.dpi"),
    ({"plotting": SimpleNamespace(dpi=0, figures=True)}, "plotting.dpi"),
    ({"plotting": SimpleNamespace(dpi=5000, figures=True)}, "plotting.dpi"),
    ({"plotting": SimpleNamespace(dpi=100, figures="yes")}, "plotting.figures"),
    ({"tracking": SimpleNamespace(max_series_points="abc")}, "tracking.max_series_points"),
    ({"tracking": SimpleNamespace(max_series_points=-5)}, "tracking.max_series_points"),
])
def test_read_settings_rejects_bad_global_keys(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        runtime.read_settings(global_config(**change))


def test_seed_at_the_numpy_limit_is_accepted():
    assert runtime.read_settings(global_config(seed=2**32 - 1)).seed == 2**32 - 1
