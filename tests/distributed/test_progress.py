"""distributed/progress.py and logs.py: epoch lines travel from a Ray task to the driver once, in order, with a
throughput and an ETA; Ray's console chatter is configured off unless DETAUX_RAY_LOGS=all."""

import threading


def test_epoch_lines_reach_the_driver_once_in_order(ray_session, capsys):
    import ray

    from detaux_ray.distributed.progress import Progress, send
    from detaux_ray.distributed.status import StatusBoard

    board = StatusBoard()
    progress = Progress("disentangle", 4, "pairs", board)

    @ray.remote(num_cpus=0.1)
    def rank0(board):  # what a training worker does, from another process
        send(board, resumed_after=1)
        for epoch in (1, 2):
            send(board, epoch=epoch, epoch_time_s=2.0 * epoch, items=1000, values={"total": 0.5 / epoch})
        # send() does not wait; calls from one process run in order, so once this one has run the board holds all
        # three (in training, rank 0's checkpoint report comes after its last line)
        ray.get(board.failure.remote())

    done = threading.Event()
    printer = threading.Thread(target=progress.follow, args=(done, 0.05))
    printer.start()
    ray.get(rank0.remote(board.handle))
    done.set()
    printer.join()
    board.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[disentangle] resuming after epoch 1/4 (the newest checkpoint)",
                     "[disentangle] epoch 2/4 total=0.5 | 500 pairs/s | ETA 4s",  # 2 epochs left x 2 s
                     "[disentangle] epoch 3/4 total=0.25 | 250 pairs/s | ETA 3s"]  # 1 left x mean(2 s, 4 s)
    send(None, epoch=0)  # no board: nothing happens
    send(board.handle, epoch=0)  # a board that is gone (the driver ended): nothing happens either


def test_printer_ends_quietly_when_the_board_dies_under_it(ray_session):
    """After a Ctrl-C the board actor dies with the driver while the printer still polls (a CI run printed the
    actor's death as a thread traceback): the printer stops without raising."""
    import ray

    from detaux_ray.distributed.progress import Progress
    from detaux_ray.distributed.status import StatusBoard

    board = StatusBoard()
    progress = Progress("disentangle", 2, "pairs", board)
    errors = []
    threading.excepthook, previous = (lambda args: errors.append(args.exc_value)), threading.excepthook
    try:
        done = threading.Event()
        printer = threading.Thread(target=progress.follow, args=(done, 0.05))
        printer.start()
        ray.kill(board.handle)
        printer.join(timeout=30)
    finally:
        threading.excepthook = previous
    assert not printer.is_alive() and errors == []


def test_quiet_env_keeps_ray_info_lines_off_the_console_unless_asked(monkeypatch):
    import yaml

    from detaux_ray.distributed import logs

    monkeypatch.delenv("DETAUX_RAY_LOGS", raising=False)
    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    env = logs.quiet_env()
    data = yaml.safe_load(open(env["RAY_DATA_LOGGING_CONFIG"]))
    assert data["handlers"]["console"]["level"] == "WARNING" and data["handlers"]["file"]["filename"] == "ray-data.log"
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and logs.train_log_level() == "WARNING"
    monkeypatch.setenv("DETAUX_RAY_LOGS", "all")
    assert logs.quiet_env() == {} and logs.train_log_level() == "INFO"
