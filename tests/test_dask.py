"""Dask scale-out gives exactly what model.predict / model.route give (skipped without dask)."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import fffcpu  # noqa: E402
import fffcpu.dask as fdask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def data():
    model = fffcpu.FFF(30, 4, 5, 6, seed=0)
    X = np.random.default_rng(0).normal(size=(2001, 30)).astype(np.float32)
    return model, X


def test_predict_and_route_on_a_local_cluster(client, data):
    model, X = data
    dX = da.from_array(X, chunks=(250, 30))
    result = fdask.predict(model, dX, client=client)
    assert isinstance(result, da.Array) and result.chunks[0] == dX.chunks[0]
    np.testing.assert_array_equal(result.compute(), model.predict(X))
    np.testing.assert_array_equal(fdask.route(model, dX).compute(), model.route(X))  # graph-shipped model


def test_without_a_client_and_from_numpy(data):
    model, X = data
    np.testing.assert_array_equal(fdask.predict(model, X).compute(scheduler="threads"), model.predict(X))
    chunked_columns = da.from_array(X, chunks=(500, 7))  # columns are gathered into whole rows
    np.testing.assert_array_equal(fdask.route(model, chunked_columns).compute(scheduler="sync"), model.route(X))


def test_bad_input(data):
    model, X = data
    with pytest.raises(ValueError, match="X has 29 features, the model was built for input_width=30"):
        fdask.predict(model, X[:, :29])
    with pytest.raises(ValueError, match="must be 2-D"):
        fdask.route(model, X[0])


@pytest.mark.parametrize("n_jobs, error", [("2", TypeError), (2.0, TypeError), (True, TypeError), (0, ValueError)])
def test_n_jobs_is_checked_when_the_graph_is_built(data, n_jobs, error):
    model, X = data
    with pytest.raises(error, match="n_jobs must be"):
        fdask.predict(model, X, n_jobs=n_jobs)
    with pytest.raises(error, match="n_jobs must be"):
        fdask.predict(fffcpu.UltraFFF(30, 5, 3, seed=0), X, n_jobs=n_jobs)


def test_models_clients_and_dtypes_are_checked_when_the_graph_is_built(data):
    model, X = data
    with pytest.raises(TypeError, match="route needs a model with tree routing .*FF has no route method"):
        fdask.route(fffcpu.FF(30, 8, 5, seed=0), X)
    with pytest.raises(TypeError, match="expected an fffcpu model"):
        fdask.predict(object(), X)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        fdask.predict(model, X, client="x")
    with pytest.raises(TypeError, match="X must hold real numbers, got dtype <U1"):
        fdask.predict(model, np.full((4, 30), "a"))
    with pytest.raises(TypeError, match="X must hold real numbers, got dtype object"):
        fdask.predict(model, np.zeros((4, 30)).astype(object))


def test_ultrafff_tasks_use_n_jobs_threads(data):
    import numba

    _, X = data

    class Probe(fffcpu.UltraFFF):  # answers with the Numba thread count its task runs with
        def predict(self, x):
            return np.full((len(x), self.output_width), numba.get_num_threads(), dtype=self.dtype)

    probe = Probe(30, 5, 3, seed=0)
    for n_jobs in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        threads = fdask.predict(probe, X, n_jobs=n_jobs).compute(scheduler="sync")
        assert threads.shape == (len(X), probe.output_width) and (threads == n_jobs).all()
