"""The ``mediaserver`` command line: argument parsing and dispatch only.

Each subcommand lives in its own module; this one parses, configures logging
once, and hands over. Usage errors exit with status 2 and name the option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mediaserver import __version__
from mediaserver.logs import configure_logging

__all__ = ["build_parser", "main"]

# The media engine is one thread per process (scale out with processes): keep
# BLAS from spawning threads that fight it for the cores. None of the imports
# above loads numpy, so this runs before numpy's first import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_DESCRIPTION = """\
Telephony media-server emulator: the sending side of a call-audio fork.
Takes call legs (real SIP + RTP, or simulated legs from audio files), decodes,
detects silence and DTMF, mixes and resamples, and delivers the audio the way
jambonz `listen`, Kazoo `record_call` and SignalWire `record_call` do."""


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from mediaserver.config import ConfigError, load_config, parse_host_port, parse_port_range

    if args.worker_channel is not None:
        return _run_serve_worker(args.worker_channel)
    try:
        overrides: dict[str, object] = {
            "app": args.app,
            "max_calls": args.max_calls,
            "dump_dir": args.dump_dir,
            "workers": args.workers,
        }
        if args.sip:
            overrides["sip_host"], overrides["sip_port"] = parse_host_port(args.sip)
        if args.admin:
            overrides["admin_host"], overrides["admin_port"] = parse_host_port(
                args.admin, "--admin", allow_zero=True
            )
        if args.rtp_ports:
            overrides["rtp_port_low"], overrides["rtp_port_high"] = parse_port_range(args.rtp_ports)
        config = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"mediaserver serve: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from mediaserver.workers import run_supervisor

        # the workers log exactly as we do (their output reaches a pipe, not a terminal)
        log_json = args.log_json if args.log_json is not None else not sys.stderr.isatty()
        log_args = ["--log-level", args.log_level, "--log-json" if log_json else "--no-log-json"]
        return run_supervisor(config, log_args)
    from mediaserver.server import run_server

    try:
        import uvloop  # the stock loop costs ~6x more CPU per RTP packet (ARCHITECTURE.md)

        return uvloop.run(run_server(config))
    except ImportError:
        return asyncio.run(run_server(config))


def _run_serve_worker(channel: int) -> int:
    """One worker of ``serve --workers N``: its configuration comes from the supervisor."""
    import asyncio

    from mediaserver.server import run_server
    from mediaserver.workers import WorkerLink

    link = WorkerLink.open(channel)
    try:
        try:
            import uvloop

            return uvloop.run(run_server(link.config, worker=link))
        except ImportError:
            return asyncio.run(run_server(link.config, worker=link))
    finally:
        link.close()


def _run_call(args: argparse.Namespace) -> int:
    from mediaserver.call_cli import run_call_command

    return run_call_command(args)


def _run_receiver(args: argparse.Namespace) -> int:
    from mediaserver.receiver import run_receiver

    return run_receiver(args.listen, args.out, args.auth, args.play)


def _run_demo(args: argparse.Namespace) -> int:
    from mediaserver.demo import run_call_demo, run_demo

    if args.dsp:
        return run_demo(out_dir=args.out, seconds=args.seconds, calls=args.calls)
    return run_call_demo(out_dir=args.out, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediaserver",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the SIP/RTP media server that real SIP equipment can call",
        description="Answer SIP calls, run the application's verbs (listen, dial, "
        "record_call, ...) on each call, and fork or record the audio.",
    )
    serve.add_argument("--config", metavar="FILE", help="server TOML (see configs/server.toml)")
    serve.add_argument("--sip", metavar="HOST:PORT", help="SIP listen address (UDP)")
    serve.add_argument("--rtp-ports", metavar="LOW-HIGH", help="RTP port range")
    serve.add_argument(
        "--app",
        metavar="FILE_OR_URL",
        help="verb-array JSON file, or an http(s) URL POSTed the call attributes per call",
    )
    serve.add_argument("--max-calls", type=int, metavar="N", help="answer 503 beyond N calls")
    serve.add_argument(
        "--dump-dir", metavar="DIR", help="write each call's decoded audio + JSON summary here"
    )
    serve.add_argument(
        "--admin", metavar="HOST:PORT", help="admin HTTP endpoint (/health, /metrics, /calls)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N processes sharing the SIP port (Linux SO_REUSEPORT), to use N cores",
    )
    # a worker of serve --workers N: the supervisor's end of the channel (workers.py)
    serve.add_argument("--worker-channel", type=int, metavar="FD", help=argparse.SUPPRESS)
    serve.set_defaults(func=_run_serve)

    call = sub.add_parser(
        "call",
        help="place scripted simulated calls against an app (no SIP equipment needed)",
        description="Play audio files as call legs through the same RTP receive path "
        "as a SIP call and run the app's verbs on them.",
    )
    call.add_argument(
        "app", metavar="APP", help="verb-array JSON file, app URL, or a ws:// URL to fork to"
    )
    call.add_argument(
        "--caller", metavar="SRC", help="audio file, tone:FREQ[:SECONDS] or silence:SECONDS"
    )
    call.add_argument("--callee", metavar="SRC", help="what the caller hears (as if bridged)")
    call.add_argument("--dtmf", metavar="SPEC", help='key presses, e.g. "1@2.5,#@4" (seconds)')
    call.add_argument("--dtmf-mode", choices=["rfc4733", "inband"], default="rfc4733")
    call.add_argument("--codec", choices=["PCMU", "PCMA", "G722", "OPUS", "L16"], default="PCMU")
    call.add_argument("--ptime", type=int, default=20, metavar="MS")
    call.add_argument("--speed", type=float, default=1.0, metavar="X", help="media clock speed-up")
    call.add_argument("--calls", type=int, default=1, metavar="N", help="concurrent calls")
    call.add_argument("--json", action="store_true", help="print a JSON summary last on stdout")
    call.add_argument(
        "--recordings",
        metavar="DIR",
        default="recordings",
        help="record_call files go here (Kazoo uploads wait in DIR-spool until delivered)",
    )
    call.add_argument(
        "--store-recordings",
        action="store_true",
        help="Kazoo record_call without a url: keep the file (default: discard, as Kazoo)",
    )
    call.set_defaults(func=_run_call)

    receiver = sub.add_parser(
        "receiver",
        help="run the reference audio.jambonz.org WebSocket receiver",
        description="Accept listen forks, validate the stream, write WAV + metadata + "
        "event log per call.",
    )
    receiver.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8765")
    receiver.add_argument("--out", metavar="DIR", default="out/receiver")
    receiver.add_argument("--auth", metavar="USER:PASS", help="require HTTP Basic auth")
    receiver.add_argument("--play", metavar="FILE", help="answer with playAudio of FILE")
    receiver.set_defaults(func=_run_receiver)

    demo = sub.add_parser(
        "demo",
        help="place a demo call into the reference receiver and show where the WAV landed",
        description="Start the reference receiver, place one scripted call whose app forks "
        "it with listen (stereo, 16 kHz, passDtmf), and print what the receiver got and "
        "where it wrote the WAV. --dsp instead runs the batched DSP chain on generated "
        "calls (PCMU RTP, jitter buffer, decode, resample, DTMF and silence detection, "
        "stereo mix) and writes one WAV per call.",
    )
    demo.add_argument("--dsp", action="store_true", help="run the batched DSP demo instead")
    demo.add_argument("--out", default="out", metavar="DIR", help="where to write the WAVs")
    demo.add_argument("--seconds", type=float, default=6.0, help="length of each demo call")
    demo.add_argument("--calls", type=int, default=4, help="calls in the --dsp batch")
    demo.set_defaults(func=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level, json=args.log_json)
    except ValueError as exc:
        parser.error(str(exc))
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
