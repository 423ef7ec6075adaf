"""Sample from a trained prior from a terminal menu (sample, repeat, edit parameters, exit), or
from a web page with --web.

    python sample-interactive.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt
    python sample-interactive.py --web --cfg-path CFG --resume CKPT [--host 127.0.0.1] [--port 7860]

The sampling flags of sample.py set the starting values of the menu and of the page.

The menu saves each result as a grid PNG in --out-dir; with `history` on, also as an animated
GIF of the sampling steps. The page (generation/web.py) samples and watches the steps, inpaints
a dataset row or an uploaded picture, and offers the images and tokens for download; it listens
on 127.0.0.1 (this machine only) unless --host says otherwise, and loads nothing from outside.
"""
import ipaddress
import os
import socket
import tempfile

from generation.pretrained import add_prior_args
from infra.cli import ArgumentParser, run_cli
from infra.devices import configure_threads
from infra.errors import UserError


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--out-dir", default="interactive", help="the menu's grids and GIFs")
    p.add_argument("--web", action="store_true", help="serve a web page instead of the terminal menu")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the page listens on (default: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=None, help="port of the page (default: the first free from 7860)")
    add_prior_args(p)  # the sampling flags set the starting values
    return p.parse_args(argv)


def check_address(host, port):
    """UserError, before any loading, for a --host or --port the page cannot listen on."""
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port {port}: expected 1..65535")
    where = f"--host {host}" + (f" --port {port}" if port is not None else "")
    try:
        family = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed one's port is free
            s.bind((host, port or 0))  # port 0: any, to check the host alone
    except socket.gaierror as e:
        raise UserError(f"{where}: not an address of this machine ({e.strerror})") from None
    except OSError as e:
        raise UserError(f"{where}: cannot listen there ({e.strerror})") from None


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    if args.web:
        check_address(args.host, args.port)
    # the heavy imports (the model code, gradio) only once the command line is known good
    from generation.interactive import InteractiveSampler, MenuOptions
    from generation.pretrained import prior_from_args, sampling_from_args

    prior = prior_from_args(args)
    settings = sampling_from_args(prior, args)
    prior.check_sampling(settings)
    if not args.web:
        InteractiveSampler(prior, settings, MenuOptions(seed=args.seed), args.out_dir).run()
        return
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry nor version check, whatever gradio builds
    from generation.web import build_page, serve

    if not is_loopback(args.host):
        print(f"warning: --host {args.host}: the page is open to the network, without a password")
    with tempfile.TemporaryDirectory(prefix="sundae-web-") as workdir:
        serve(build_page(prior, settings, MenuOptions(seed=args.seed), workdir), args.host, args.port, workdir)


if __name__ == "__main__":
    run_cli(main)
