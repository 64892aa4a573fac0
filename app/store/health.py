"""Whether the store can serve: Redis answers with every script loaded, and
what server it is."""

from __future__ import annotations

from typing import Any

from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore


class HealthStore(StoreCore):
    def ready(self) -> bool:
        """Redis answers and every script is in its cache (loading them if not)."""
        with unavailable_on_redis_errors():
            if not self.scripts.all_loaded():
                self.scripts.load_all()
            return self.scripts.all_loaded()

    def server_info(self) -> dict[str, Any]:
        """Flavor, version and eviction policy, from INFO alone: CONFIG may be
        refused to a restricted ACL user, or renamed by a managed service."""
        with unavailable_on_redis_errors():
            info = self.client.info("server")
            memory = self.client.info("memory")
        flavor = "valkey" if "valkey_version" in info or info.get("server_name") == "valkey" \
            else "redis"
        return {"flavor": flavor,
                "version": info.get(f"{flavor}_version") or info.get("redis_version"),
                "maxmemory_policy": memory.get("maxmemory_policy")}
