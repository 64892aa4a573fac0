"""Small modules: the store in rooms of its own, and no module of the server
over 400 lines (client/ is checked once its cli.py is split)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE = 400
MAX_STORE_ROOM = 300
STORE_ROOMS = ("core", "writes", "listing", "bulk", "retention", "stats", "health", "workers",
               "rerun", "bulk_delete", "lexical", "run_times")


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_of_app_is_over_400_lines():
    over = {p.relative_to(ROOT).as_posix(): lines(p) for p in (ROOT / "app").rglob("*.py")
            if lines(p) > MAX_MODULE}
    assert not over, over


def test_each_room_of_the_store_is_under_300_lines():
    for room in STORE_ROOMS:
        assert lines(ROOT / "app" / "store" / f"{room}.py") < MAX_STORE_ROOM, room


def test_the_store_facade_is_thin_and_keeps_the_public_names():
    from app.store import JobStore
    facade = ROOT / "app" / "store" / "__init__.py"
    assert lines(facade) < 60
    for name in ("register", "register_with_time", "apply_command", "apply_command_with_time",
                 "bulk_command", "heartbeats", "record_heartbeats", "heartbeat", "delete",
                 "sweep_expired", "get", "state", "get_with_time", "versions",
                 "get_many_with_time", "history", "server_time_ms", "list_jobs",
                 "count_by_state", "stats", "ready", "server_info"):
        assert callable(getattr(JobStore, name, None)), name
    assert not hasattr(JobStore, "register_many")  # tests/bulk_load.py


def test_the_long_poll_engine_is_not_in_the_store():
    assert not (ROOT / "app" / "store" / "events.py").exists()
    assert (ROOT / "app" / "events.py").exists()
