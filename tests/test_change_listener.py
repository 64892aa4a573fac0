"""The change listener subscribes at the first long-poll, not before (a
subscribed process is woken by every change), and that first long-poll is
still woken by the change message, not by its periodic re-read."""

from __future__ import annotations

import threading
import time

from app.events import ChangeNotifier

# Longer than any test waits: only a change message can wake a waiter.
NO_REREAD = 60.0


def subscribers(redis_client, store) -> int:
    channels = [shard.channel for shard in store.keys.shards.values()]
    return sum(count for _, count in redis_client.pubsub_shardnumsub(*channels))


def wait_until(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.01)


def test_no_subscription_until_the_first_long_poll(store, redis_client):
    notifier = ChangeNotifier(store, max_waiters=4, poll_interval=NO_REREAD)
    notifier.start()
    try:
        job, _ = store.register("teams")
        time.sleep(0.3)  # time enough for a listener that subscribes at once
        assert subscribers(redis_client, store) == 0

        answer = {}
        waiter = threading.Thread(target=lambda: answer.update(
            job=notifier.wait_for_change(job.id, job.version, timeout=30)[0]))
        waiter.start()
        wait_until(lambda: notifier.waiting() == 1, "waiting")
        wait_until(lambda: subscribers(redis_client, store) == len(store.keys.shards),
                   "subscribed to every shard channel")
        time.sleep(0.3)  # the waiter reads the job once subscribed: then comes the change
        store.apply_command(job.id, "pause")
        waiter.join(40)
        assert (answer["job"].state, answer["job"].version) == ("pause", job.version + 1)
    finally:
        notifier.stop()


def test_stop_ends_listeners_that_never_subscribed(store):
    notifier = ChangeNotifier(store, max_waiters=4)
    notifier.start()
    notifier.stop()
    for thread in notifier._threads:
        thread.join(10)
        assert not thread.is_alive()
