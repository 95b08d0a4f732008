"""``python -m recsys.serve``: the HTTP recommendation service (FastAPI under uvicorn).

* ``--dataset D [--run PATH] [--host 127.0.0.1] [--port 8000]``: serve the run (default: D's
  best run). The demo page is at ``/``, the API docs at ``/docs``, metrics at ``/metrics``.
* ``index --dataset D [--run PATH]``: build the run's item index into its folder ahead of
  serving (serving builds a missing or stale one itself, which costs time at startup).

Adding items and reloading need ``RECSYS_API_KEY`` set; clients send it as ``X-API-Key``.
Without it those endpoints answer 403. The service listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.options import DatasetOpt, DeviceOpt, ModelsDirOpt, ProcessedDirOpt
from recsys.serving.batching import MAX_BATCH

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

RunOpt = Annotated[
    Optional[Path], typer.Option("--run", help="Run folder (default: the dataset's best run).")
]


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` now, so that a taken port is a one-line error before the run loads."""
    sock = None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        if sock is not None:
            sock.close()
        raise fail(
            f"cannot listen on {host}:{port} ({err.strerror or err}); is another service on "
            "that port? pick another with --port"
        )
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    dataset: str,
    run_dir: Path | None,
    host: str,
    port: int,
    *,
    processed_dir: Path | None = None,
    models_dir: Path | None = None,
    device: str = "auto",
    max_batch: int = MAX_BATCH,
    access_log: bool = False,
) -> None:
    """Load the run, check it answers, then serve it until interrupted."""
    import uvicorn

    from recsys.devices import resolve_device
    from recsys.serving.app import API_KEY_ENV, create_app, run_loader, settle_memory, warm_up

    if not 1 <= max_batch <= 4096:
        raise fail(f"--max-batch must be between 1 and 4096, got {max_batch}")
    with listen_socket(host, port) as sock:
        loader = run_loader(
            dataset,
            run_dir,
            processed_dir=processed_dir,
            models_dir=models_dir,
            device=str(resolve_device(device)),
        )
        served = loader(None)
        warm_up(served)
        settle_memory()
        api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is None:
            logger.warning(f"{API_KEY_ENV} is not set: adding items and reloads are disabled")
        if not is_loopback(host):
            logger.warning(f"listening on {host}: the service is reachable beyond this machine")
        application = create_app(served, api_key=api_key, loader=loader, max_batch=max_batch)
        logger.info(
            f"serving {served.name} ({served.dataset}, {served.n_items} items) at "
            f"http://{host}:{sock.getsockname()[1]}/ (API docs at /docs)"
        )
        del served  # the service holds the run now; held here too, a reload could not free it
        config = uvicorn.Config(
            application, log_level="info", access_log=access_log, lifespan="on"
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it has shut down on
            pass
    logger.info("the service stopped")


def build_index(dataset: str, run_dir: Path | None, models_dir: Path | None = None) -> Path:
    """Build ``run_dir``'s item index (default: the dataset's best run) from its checkpoint."""
    from recsys.api.index import build_run_index
    from recsys.api.run import item_vectors, table_fingerprint
    from recsys.api.loading import trained_run

    trained, checkpoint = trained_run(run_dir, dataset, models_dir=models_dir)
    if trained.model.config.item_repr == "semantic":
        raise fail(
            f"run {trained.run_dir} recommends by beam search over semantic IDs and has no item "
            "index to build; serve it as it is"
        )
    vectors = item_vectors(trained.model).numpy()
    return build_run_index(trained.run_dir, vectors, table_fingerprint(checkpoint, vectors))


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_dir: RunOpt = None,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free one)."),
    max_batch: int = typer.Option(MAX_BATCH, help="Most queries scored in one forward pass."),
    device: DeviceOpt = "auto",
    access_log: bool = typer.Option(False, help="Log every request (off: /metrics counts)."),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Serve recommendations over HTTP; the index command builds a run's item index."""
    if ctx.invoked_subcommand is not None:
        return
    serve(
        dataset,
        run_dir,
        host,
        port,
        processed_dir=processed_dir,
        models_dir=models_dir,
        device=device,
        max_batch=max_batch,
        access_log=access_log,
    )


@app.command("index")
def index_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_dir: RunOpt = None,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Build the run's item index into RUN/index/ (exact or FAISS IVF by catalogue size)."""
    folder = build_index(dataset, run_dir, models_dir)
    typer.echo(f"wrote {folder}")


if __name__ == "__main__":
    run(app)
