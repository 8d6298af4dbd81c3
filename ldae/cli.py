"""The ``ldae`` command line: ``ldae demo [--quick]``."""

import argparse
import sys


def main(argv=None):
    """Entry point of the ``ldae`` console script and of ``python -m ldae``."""
    parser = argparse.ArgumentParser(prog="ldae", description="Latent Diffusion Autoencoders for brain MRI")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="synthetic cohort -> fit -> embed -> probe -> compare -> report")
    demo.add_argument("--quick", action="store_true", help="a smaller run, under two minutes")
    demo.add_argument("--output", default="ldae-demo", help="report folder (default: ldae-demo)")
    demo.add_argument("--subjects", type=int, default=None, help="number of synthetic subjects")
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output, quick=args.quick, n_subjects=args.subjects,
                 random_state=args.random_state, verbose=0 if args.quiet else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
