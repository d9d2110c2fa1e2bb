"""A local web page to try a trained Sa2VA: upload an image, type a prompt, move a threshold slider.

    python tools/demo_app.py --config CFG --checkpoint work_dirs/CFG/iter_N.pth \\
        [--threshold-file eval/best_threshold.json | --threshold T] [--host 127.0.0.1] [--port 7860]
        [--samples data/chase_db1/images] [--max-pixels 16777216] [--device cpu|cuda] [--max-tiles N]
        [--timeout 30] [--max-connections 32] [--queue-timeout 120]

Prints ``Sa2VA demo: http://127.0.0.1:PORT/`` once it serves (``--port 0`` picks a free port); Ctrl-C or
SIGTERM stops it. The model is a config + trainable-weights checkpoint, as for ``tools/predict.py``;
loading an exported Hugging Face folder directly is not offered (the predictor builds from a config).
Serves on 127.0.0.1 only unless ``--host`` says otherwise; there is no authentication. Nothing is
written to disk except what libraries cache, which goes to a temporary folder removed on exit.
Limits: a client has --timeout seconds to send a request and to take the answer, --max-connections
are served at once (more get 503), the model runs one request at a time and a request waits for it at
most --queue-timeout seconds (then 503); a POST from another site's page (Origin / Sec-Fetch-Site) gets
403. See projects/sa2va/app/server.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.cli import add_predictor_args, add_threshold_args, predictor_kwargs  # noqa: E402

DEFAULT_SAMPLES = ROOT / "data/chase_db1/images"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the Sa2VA config the checkpoint was trained with")
    p.add_argument("--checkpoint", help="trainable-weights checkpoint (iter_N.pth); omit to use the config's")
    add_threshold_args(
        p,
        threshold_help="default slider threshold (default 0.5)",
        file_help='JSON {"threshold": t}, e.g. best_threshold.json from tools/test.py',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: a free one, printed)")
    p.add_argument(
        "--samples",
        default=str(DEFAULT_SAMPLES) if DEFAULT_SAMPLES.is_dir() else None,
        help="folder of sample images offered on the page (default: the bundled CHASE_DB1 images)",
    )
    p.add_argument("--no-samples", action="store_true", help="offer no sample images")
    p.add_argument(
        "--prompt", default="Please segment the blood vessel.", help="prompt pre-filled on the page"
    )
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest accepted width * height")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest accepted upload in MiB")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,  # = server.DEFAULT_TIMEOUT_S; the server module is imported only in main()
        help="seconds a client has to send a whole request and to take the answer; an idle or slow "
        "connection is closed after it (default %(default)g)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=32,  # = server.DEFAULT_MAX_CONNECTIONS
        help="connections served at once, one thread each; more are answered 503 (default %(default)d)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=120.0,  # = server.DEFAULT_QUEUE_TIMEOUT_S
        help="the model runs one request at a time; seconds a request waits for it before a 503 "
        "(default %(default)g)",
    )
    add_predictor_args(p)
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if args.max_pixels < 1:
        p.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.max_upload_mb <= 0:
        p.error(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    for name in ("timeout", "queue_timeout"):
        if not getattr(args, name) > 0:  # also refuses nan
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_connections < 1:
        p.error(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return args


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="sa2va_demo_app_") as tmp:
        # Library caches (matplotlib's font list, yapf's grammar, huggingface_hub's version stamp) go to
        # the temporary folder, removed on exit; set before anything imports those libraries. Models are
        # read from local folders, not from a hub cache.
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))
        os.environ.setdefault("XDG_CACHE_HOME", os.path.join(tmp, "cache"))
        args = parse_args(argv)
        from mmengine.logging import MMLogger

        from projects.sa2va.app.server import DemoApp, make_server, server_url
        from projects.sa2va.inference.predictor import Sa2VAPredictor

        logger = MMLogger.get_instance("sa2va_demo_app", log_level="INFO")
        try:
            predictor = Sa2VAPredictor.from_config(args.config, args.checkpoint, **predictor_kwargs(args))
            app = DemoApp(
                predictor,
                samples_dir=None if args.no_samples else args.samples,
                max_pixels=args.max_pixels,
                max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                prompt=args.prompt,
                max_new_tokens=args.max_new_tokens,
                threshold_source=args.threshold_file
                or ("--threshold" if args.threshold is not None else "0.5"),
                queue_timeout=args.queue_timeout,
            )
            server = make_server(
                app, args.host, args.port, timeout=args.timeout, max_connections=args.max_connections
            )
        except (OSError, ValueError, KeyError) as e:
            print(f"demo_app.py: {e}", file=sys.stderr)
            return 2
        if not server.server_address[0].startswith("127.") and server.server_address[0] != "::1":
            logger.warning(f"demo_app: serving on {args.host}: anyone who can reach it can use the model")
        signal.signal(signal.SIGTERM, _stop)
        print(f"Sa2VA demo: {server_url(server)}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            logger.info("demo_app: stopped")
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
