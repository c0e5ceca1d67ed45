"""The planned sweeper held to Hydra's own test suites for sweepers and launchers.

Hydra's apps here know nothing of gradkit (no sweep plan, no callback), so the planned sweeper
composes each job as the basic sweeper would: these suites check that it sweeps, batches
and hands every job its overrides and config exactly as Hydra's basic sweeper does.
"""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite
from hydra.version import VersionBase
from packaging.version import Version

from gradkit.sweeps.hydra_compat import register_sweeper

# Hydra's test apps use its 1.1 defaults, which change the working directory, and say so
pytestmark = pytest.mark.filterwarnings(
    "ignore:Future Hydra versions will no longer change working directory:UserWarning")


@pytest.fixture(autouse=True)
def _as_hydras_suites_expect(hydra_restore_singletons):
    """Hydra's 1.1 defaults, which its suites assume (gradkit's runs in this process set 1.3;
    the singletons are restored after the test), and the planned sweeper registered: Hydra's
    plugin scan does not list an editable install's plugins."""
    VersionBase.instance().setbase(Version("1.1"))
    register_sweeper()


@pytest.mark.parametrize(("launcher_name", "overrides"), [("basic", ["hydra/sweeper=planned"])])
class TestPlannedSweeperWithTheBasicLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(("launcher_name", "overrides"),
                         [("basic", ["hydra/sweeper=planned", "hydra.sweeper.max_batch_size=2"])])
class TestPlannedSweeperInBatches(BatchedSweeperTestSuite):
    pass
