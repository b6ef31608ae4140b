"""What of Ray's output reaches the terminal: the lines a user cannot act on are dropped, everything else prints."""

import io

from detaux_ray.distributed.logs import filter_forwarded_logs, is_ray_noise

# As Ray 2.60 printed them during a quick-preset run (node ids shortened).
NOISE = [
    "WARNING: 12 PYTHON worker processes have been started on node: b0a3cd70 with address: 192.0.2.2, which is 6x the "
    "maximum expected startup concurrency (2). This could be a result of using a large number of actors",
    "[2026-12-03 06:07:26,777 E 11041 11075] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'39efca9b' has constructor arguments in the object store and max_restarts > 0. If the arguments in the object "
    "store go out of scope or are lost, the actor restart will fail.",
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. Continuing to monitor.",
]
KEPT = ["[disentangle] epoch 1/2 total=2.624 rec=0.1314", "Traceback (most recent call last):",
        "ValueError: a worker's real error", "ray.exceptions.RayTaskError(DataError): cannot decode image a.png"]


def test_noise_is_recognised_and_errors_are_not():
    assert all(is_ray_noise(line) for line in NOISE)
    assert not any(is_ray_noise(line) for line in KEPT)


def test_rays_printer_drops_the_noise_and_prints_the_rest(monkeypatch):
    from ray._private import worker

    monkeypatch.delenv("DETAUX_RAY_LOGS", raising=False)
    monkeypatch.setattr(worker, "print_worker_logs", worker.print_worker_logs)  # restored after the test
    filter_forwarded_logs()
    out = io.StringIO()
    worker.print_worker_logs({"lines": NOISE + KEPT, "pid": 123, "ip": "192.0.2.2", "is_err": True,
                              "actor_name": "TrainController", "task_name": ""}, out)
    printed = out.getvalue()
    assert all(line in printed for line in KEPT) and not any(is_ray_noise(line) for line in printed.splitlines())
    out = io.StringIO()
    worker.print_worker_logs({"lines": NOISE, "pid": "raylet", "is_err": False}, out)  # nothing left: nothing printed
    assert out.getvalue() == ""
