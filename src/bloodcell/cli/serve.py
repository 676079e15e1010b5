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
    parser.add_argument("--max-megapixels", type=float, default=4.0,
                        help="most pixels per image, in millions, checked before decoding (default: 4; a cell "
                             "image is about 0.13)")
    parser.add_argument("--allowed-hosts", nargs="+", default=None, metavar="NAME",
                        help="Host header names to answer besides localhost and the --host address "
                             "(e.g. the server's DNS name behind a proxy; '*' answers any)")
    parser.add_argument("--cases", default=None, metavar="DIR",
                        help="folder of the case store for lab review (/v1/cases; default: bloodcell-cases in the "
                             "working folder, or $BLOODCELL_CASES); created on first use")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args) -> int:
    from bloodcell.server import serve  # deferred: `bloodcell --help` must not load the service stack

    return serve(args.model, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
                 max_upload_mb=args.max_upload_mb, max_files=args.max_files, max_megapixels=args.max_megapixels,
                 allowed_hosts=args.allowed_hosts, log_level=args.log_level, cases=args.cases)
