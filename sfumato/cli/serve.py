"""`sfumato serve`: the HTTP server (OpenAI, A1111 and native APIs), alone or on Ray Serve."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sfumato.cli.common import add_compile_arg, add_memory_args, add_safety_args, memory_from_args
from sfumato.errors import InvalidRequest


def add_parsers(commands) -> None:
    serve = commands.add_parser("serve", help="HTTP server: OpenAI Images, A1111 /sdapi/v1 and native jobs APIs")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --api-key)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--model", "-m", help="default model (else $SFUMATO_MODEL or the embedded one)")
    serve.add_argument("--api-key", default=os.environ.get("SFUMATO_API_KEY"),
                       help="require Authorization: Bearer KEY (visible in `ps`: prefer $SFUMATO_API_KEY or "
                            "--api-key-file)")
    serve.add_argument("--api-key-file", type=Path, default=os.environ.get("SFUMATO_API_KEY_FILE"),
                       help="read the API key from this file (first line); or set $SFUMATO_API_KEY_FILE")
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind without a key")
    serve.add_argument("--max-batch-size", type=int, default=8, help="images per batch across jobs (1 = no batching)")
    serve.add_argument("--batch-wait-ms", type=float, default=30.0,
                       help="a batch that is not full waits this long after its last new job for more compatible "
                            "jobs (10 times this at most)")
    serve.add_argument("--queue-size", type=int, default=256, help="unfinished jobs before answering 429")
    serve.add_argument("--preview", choices=["cheap", "full", "off"], default="cheap",
                       help="step previews while a client watches: a linear latent->RGB map (cheap), a VAE decode "
                            "(full), or none")
    serve.add_argument("--comfy-frontend", action="store_true",
                       help="also serve ComfyUI's own web front end at /comfy/ (needs `pip install "
                            "comfyui-frontend-package`, GPL-3.0; a keyless server only)")
    serve.add_argument("--data-dir", type=Path, default=Path("sfumato-server"), help="job database and images")
    serve.add_argument("--store", default=os.environ.get("SFUMATO_STORE"), metavar="URL",
                       help="job store: sqlite (data-dir/jobs.sqlite3, default) or postgresql://user@host/db, one "
                            "queue for several servers (they must share --data-dir); or set $SFUMATO_STORE")
    serve.add_argument("--store-lease", type=float, default=30.0, metavar="S",
                       help="shared store: a running job whose server has been silent this long runs again elsewhere")
    serve.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    serve.add_argument("--allowed-host", action="append", default=[],
                       help="answer requests for this Host name besides loopback names and the bind address "
                            "(repeatable; e.g. the name a reverse proxy forwards)")
    ray = serve.add_argument_group("Ray Serve (several replicas, one queue)")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="serve through Ray Serve: a local Ray instance, or the cluster at ADDRESS")
    ray.add_argument("--replicas", type=int, default=1, help="generation replicas, each with its own engine")
    ray.add_argument("--autoscale", metavar="MIN,MAX", help="scale replicas between MIN and MAX on load")
    ray.add_argument("--autoscale-target", type=float, default=2.0,
                     help="requests in flight per replica that autoscaling aims at")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (fractions share one)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    add_compile_arg(serve)
    add_memory_args(serve)
    serve.add_argument("--max-side", type=int, default=2048)
    serve.add_argument("--max-steps", type=int, default=150)
    serve.add_argument("--max-images", type=int, default=16, help="images per request")
    serve.add_argument("--max-frames", type=int, default=240, help="frames per animation")
    serve.add_argument("--max-prompt-chars", type=int, default=4000, help="characters per text field")
    serve.add_argument("--max-upload-mb", type=int, default=20, help="bytes per uploaded image or video")
    serve.add_argument("--max-body-mb", type=int, default=64,
                       help="request body of routes that take images (others: --max-text-body-kb)")
    serve.add_argument("--max-text-body-kb", type=int, default=1024, help="request body of every other route")
    serve.add_argument("--device")
    add_safety_args(serve)
    serve.set_defaults(run=cmd_serve)


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file / $SFUMATO_API_KEY_FILE, else --api-key / $SFUMATO_API_KEY."""
    if not args.api_key_file:
        return args.api_key or None
    try:
        key = Path(args.api_key_file).read_text().strip().splitlines()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the API key file {args.api_key_file}: {exc.strerror or exc}") from None
    if not key or not key[0].strip():
        raise InvalidRequest(f"the API key file {args.api_key_file} is empty")
    return key[0].strip()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sfumato.server.app import create_app
    from sfumato.server.settings import Limits, ServerSettings

    limits = Limits(max_side=args.max_side, max_pixels=args.max_side ** 2, max_steps=args.max_steps,
                    max_images=args.max_images, max_frames=args.max_frames, max_prompt_chars=args.max_prompt_chars,
                    max_upload_bytes=args.max_upload_mb * 2**20, max_body_bytes=args.max_body_mb * 2**20,
                    max_text_body_bytes=args.max_text_body_kb * 2**10)
    settings = ServerSettings(host=args.host, port=args.port, model=args.model, api_key=_api_key(args),
                              insecure_no_auth=args.insecure_no_auth, max_batch_size=args.max_batch_size,
                              batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size, data_dir=args.data_dir,
                              store=args.store, store_lease_s=args.store_lease,
                              cors_origins=tuple(args.cors_origin), allowed_hosts=tuple(args.allowed_host),
                              safety=args.safety,
                              safety_threshold=args.safety_threshold, safety_policy=args.safety_policy,
                              limits=limits, device=args.device, preview=args.preview,
                              comfy_frontend=args.comfy_frontend,
                              compile=args.compile, memory=memory_from_args(args))
    if args.ray:
        from sfumato.scale import serve as ray_serve

        scale = ray_serve.ServeScale(args.replicas, ray_serve.parse_autoscale(args.autoscale) if args.autoscale
                                     else None, args.autoscale_target, args.gpus_per_replica, args.cpus_per_replica,
                                     args.ray)
        ray_serve.run_forever(settings, scale, lambda: print(
            f"sfumato serving on Ray Serve at http://{args.host}:{args.port} ({args.autoscale or args.replicas} "
            f"replicas{', API key required' if settings.api_key else ''})", file=sys.stderr, flush=True))
        return 0
    app = create_app(settings.check())
    print(f"sfumato serving {app.state.service.current_model or 'no model'} on http://{args.host}:{args.port} "
          f"(docs at /docs{', API key required' if settings.api_key else ''})", file=sys.stderr, flush=True)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/SIGINT: stop the running job within a step, requeue it
            service.begin_shutdown()
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a graceful stop exits 0 (uvicorn would re-raise the signal)

    Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                          timeout_graceful_shutdown=1)).run()
    return 0
