"""`tapeout watch` and `tapeout hook install`: the command-line side of flows/triggers.py.
Building the parser imports nothing of Prefect: the handlers import it when they run."""

from __future__ import annotations

from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def add_commands(subparsers, common) -> None:
    """`tapeout watch` and `tapeout hook install`."""
    watch = subparsers.add_parser(
        "watch", parents=[common], help="build every model commit: cron schedule + event trigger"
    )
    watch.add_argument("repo", type=Path)
    watch.add_argument("--pipeline", required=True, help="pipeline file, relative to the repository")
    watch.add_argument("--branch", help="the branch to build (default: the repository's current branch)")
    watch.add_argument("--cron", default="*/15 * * * *", help="schedule of the watcher (default: every 15 min)")
    watch.add_argument("--once", action="store_true", help="build what is pending now and exit (no server needed)")
    watch.set_defaults(func=_watch_command)

    hook = subparsers.add_parser("hook", parents=[common], help="git hooks that emit model.committed")
    actions = hook.add_subparsers(metavar="ACTION")
    install = actions.add_parser("install", parents=[common], help="install the hooks into REPO")
    install.add_argument("repo", type=Path)
    install.add_argument("--pipeline", required=True, help="pipeline file, relative to the repository")
    install.add_argument("--api-url", help="Prefect server URL the hooks send to (default: the environment's)")
    install.set_defaults(func=_hook_install_command)


def _watch_command(args) -> int:
    from tapeout.flows import environment, preflight
    from tapeout.flows.config import load_pipeline
    from tapeout.flows.source import repository_root
    from tapeout.flows.triggers import branch_to_watch

    # What the watcher needs is checked here, before Prefect starts: a bad branch or pipeline
    # is one error line, not a failed flow run's traceback.
    root = repository_root(args.repo)
    args.branch = branch_to_watch(root, args.branch)
    preflight.check(load_pipeline(root / args.pipeline))
    if not args.debug:
        environment.quiet_prefect_logging()
    if args.once:
        from tapeout.flows.triggers import watch_flow

        built = watch_flow(str(root), args.pipeline, args.branch, str(args.home_path))
        print(f"built {len(built)} commit(s): {' '.join(sha[:12] for sha in built) or 'none pending'}")
        return 0
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise InvalidInput(
            "tapeout watch serves deployments and needs a Prefect server: set PREFECT_API_URL "
            "(see docs/scale-out.md), or use --once"
        )
    from tapeout.flows.triggers import deployments

    serve(*deployments(root, args.pipeline, args.branch, args.cron, args.home_path))
    return 0


def _hook_install_command(args) -> int:
    from tapeout.flows.triggers import install_hook

    for path in install_hook(args.repo, args.pipeline, args.api_url):
        print(f"installed {path}")
    return 0
