"""Shared fixtures: real SQLite state, real demo Parquet, real DuckDB engine, the real Flask app."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox.demo_data import import_demo
from sandbox.policy.loader import load_policies
from sandbox.services import Services, Settings
from sandbox.state.grants_store import apply_policies

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"


@pytest.fixture(scope="session")
def demo_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo data (NHANES, UCI Adult) converted to Parquet once per session."""
    root = tmp_path_factory.mktemp("data")
    import_demo(root, progress=lambda _m: None)
    return root


@pytest.fixture(scope="session")
def warm_engine_dir(tmp_path_factory: pytest.TempPathFactory, demo_data_root: Path) -> Path:
    """A state dir whose engine file is built once; tests copy it instead of rebuilding."""
    state = tmp_path_factory.mktemp("warm-state")
    services = Services(Settings(state_dir=state, data_root=demo_data_root))
    apply_policies(services.policies, load_policies(POLICIES), "test")
    services.engine.ensure(services.policies.datasets())
    return state / "engine"


@pytest.fixture
def services(tmp_path: Path, demo_data_root: Path, warm_engine_dir: Path) -> Services:
    """Fresh state with the demo policies applied and the engine ready."""
    state = tmp_path / "state"
    shutil.copytree(warm_engine_dir, state / "engine")
    svc = Services(Settings(state_dir=state, data_root=demo_data_root))
    apply_policies(svc.policies, load_policies(POLICIES), "test")
    svc.engine.ensure(svc.policies.datasets())
    return svc


@pytest.fixture
def own_data(tmp_path: Path, demo_data_root: Path, warm_engine_dir: Path) -> tuple[Services, Path]:
    """A data root of this test's own (it rewrites a source file), with the demo policies; engine not built."""
    root = tmp_path / "data"
    shutil.copytree(demo_data_root, root)
    state = tmp_path / "state"
    shutil.copytree(warm_engine_dir, state / "engine")
    svc = Services(Settings(state_dir=state, data_root=root))
    apply_policies(svc.policies, load_policies(POLICIES), "test")
    return svc, root


@pytest.fixture
def app(services: Services):  # noqa: ANN201
    from gateway.app import create_app

    application = create_app(services=services)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):  # noqa: ANN001, ANN201
    return app.test_client()


@pytest.fixture
def alice(services: Services) -> dict[str, str]:
    """Authorization header of alice, a member of the demo grant g-2026-001."""
    return {"Authorization": f"Bearer {services.tokens.create('alice')}"}


@pytest.fixture
def mallory(services: Services) -> dict[str, str]:
    """Authorization header of a user who holds no grant."""
    return {"Authorization": f"Bearer {services.tokens.create('mallory')}"}
