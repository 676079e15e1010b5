"""``bloodcell serve``: the REST service and web page."""

from __future__ import annotations

HELP = "Serve the model over HTTP (REST API + web page at /), default http://127.0.0.1:8000."


def add_arguments(parser) -> None:
    parser.add_argument("-m", "--model", default=None,
                        help="model folder or exported .onnx file (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default: 1; one process already batches concurrent requests and "
                             "uses every core through onnxruntime)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker (default: the usable CPUs)")
    parser.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body in MB (default: 32)")
    parser.add_argument("--max-files", type=int, default=64, help="most images per request (default: 64)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def make_app():
    """Application factory for uvicorn worker processes (settings from the environment)."""
    import json
    import os

    from bloodcell.server import create_app

    opts = json.loads(os.environ["BLOODCELL_SERVE_OPTIONS"])
    return create_app(opts["model"], max_upload_mb=opts["max_upload_mb"], max_files=opts["max_files"], threads=opts["threads"])


def run(args) -> int:
    import json
    import os
    import sys

    import uvicorn

    from bloodcell.core.errors import ConfigError
    from bloodcell.server import create_app

    if args.workers < 1 or args.max_files < 1 or args.max_upload_mb <= 0:
        raise ConfigError("--workers and --max-files must be at least 1 and --max-upload-mb positive.")
    print(f"bloodcell serve: web page and API at http://{args.host}:{args.port}/ (API docs at /docs); Ctrl+C stops.",
          file=sys.stderr)
    if args.workers == 1:
        app = create_app(args.model, max_upload_mb=args.max_upload_mb, max_files=args.max_files, threads=args.threads)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        return 0
    from bloodcell.core.model_choice import resolve_model

    os.environ["BLOODCELL_SERVE_OPTIONS"] = json.dumps({
        "model": str(resolve_model(args.model)), "max_upload_mb": args.max_upload_mb,
        "max_files": args.max_files, "threads": args.threads or 1,
    })
    uvicorn.run("bloodcell.cli.serve:make_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level)
    return 0
