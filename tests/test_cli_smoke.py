from conftest import runs_of


def test_smoke(cli, store):
    code, err = cli("experiment=jacobian")
    assert code == 0, err
    assert len(runs_of(store, "jacobian")) == 1
