"""`python -m pdstack COMMAND`: tools around the Pulumi program (which is the repository's __main__.py).

Commands:
  import-ansible INVENTORY.yml [SERVER_TEMPLATE.yml] --stack NAME   write Pulumi.NAME.yaml from an Omni-Infer
                                                                    Ansible inventory and server template
  status -s STACK [--config-file FILE] [--json] [--all]             check every host against what the stack
                                                                    deployed; print repair commands
Each command is a `_cmd_<name>(args) -> exit code` registered in COMMANDS with its argument setup.
Exit codes: 0 done, 1 refused (e.g. the file exists) or, for status, something differs; 2 bad input or usage.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2
_STACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _args_import_ansible(p: argparse.ArgumentParser) -> None:
    p.add_argument("inventory", metavar="INVENTORY.yml", help="the Ansible YAML inventory (groups P, D, C)")
    p.add_argument("template", metavar="SERVER_TEMPLATE.yml", nargs="?",
                   help="the server template whose play `environment:` block sets paths, image, names, model lengths")
    p.add_argument("--stack", required=True, help="stack name: writes Pulumi.NAME.yaml")
    p.add_argument("--dir", default=".", help="where to write Pulumi.NAME.yaml (default: the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing Pulumi.NAME.yaml")
    p.add_argument("--image", help="image for every container, instead of (or without) the template's DOCKER_IMAGE_ID")
    p.add_argument("--readiness-timeout", type=int, default=1800, metavar="SECONDS",
                   help="pdstack:readiness.timeoutSeconds (default 1800: first starts compile graphs)")


def _cmd_import_ansible(args: argparse.Namespace) -> int:
    from .importer import ImportFailed, Options, import_ansible
    from .importer.output import stack_file_text, summary, write_stack_file

    if not _STACK_NAME.fullmatch(args.stack):
        print(f"error: --stack {args.stack!r} is not a stack name (letters, digits, '_', '.', '-')", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not os.path.isdir(args.dir):
        print(f"error: --dir {args.dir}: no such directory", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = os.path.join(args.dir, f"Pulumi.{args.stack}.yaml")
    if os.path.exists(path) and not args.force:
        print(f"error: {path} already exists; pass --force to overwrite it (or choose another --stack)",
              file=sys.stderr)
        return EXIT_REFUSED
    if args.readiness_timeout < 1:
        print("error: --readiness-timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        imported = import_ansible(args.inventory, args.template,
                                  Options(image=args.image, readiness_timeout=args.readiness_timeout))
    except ImportFailed as failed:
        print(f"error: cannot import {args.inventory}" + (f" with {args.template}" if args.template else "") + ":",
              file=sys.stderr)
        for problem in failed.problems:
            print(f"  {problem}", file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        write_stack_file(path, stack_file_text(imported, args.stack))
    except OSError as err:
        print(f"error: cannot write {path}: {err.strerror}", file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(summary(imported, path))
    print(f"\nNext: bin/pulumi stack init {args.stack} && bin/pulumi preview   (from the directory of Pulumi.yaml)")
    return EXIT_OK


def _args_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--stack", required=True, help="the stack to check")
    p.add_argument("--config-file", metavar="FILE",
                   help="the stack's config file, when it is not Pulumi.STACK.yaml (as given to `pulumi up`)")
    p.add_argument("--json", action="store_true", help="print the rows and repair commands as JSON")
    p.add_argument("--all", action="store_true", help="list every check, not only the differences")
    p.add_argument("--pulumi", default=None, metavar="PATH",
                   help="the Pulumi CLI to ask (default: this repository's bin/pulumi)")


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from .status import check, live

    if not _STACK_NAME.fullmatch(args.stack.rsplit("/", 1)[-1]):
        print(f"error: -s {args.stack!r} is not a stack name", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.config_file and not os.path.isfile(args.config_file):
        print(f"error: --config-file {args.config_file}: no such file", file=sys.stderr)
        return EXIT_BAD_INPUT
    config_file = os.path.abspath(args.config_file) if args.config_file else None
    try:
        stack = live.read_stack(args.stack, config_file, args.pulumi or str(live.ROOT / "bin/pulumi"))
    except live.StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rows = live.check_stack(stack)
    repairs = [check.repair_for(r, args.stack, stack.urns, config_file) for r in rows]
    every = check.repair_all(rows, args.stack, stack.urns, config_file)
    bad = [r for r in rows if not r.ok]
    if args.json:
        json.dump({"stack": args.stack, "ok": not bad,
                   "rows": [dict(host=r.host, container=r.container, check=r.check, expected=r.expected,
                                 found=r.found, ok=r.ok, hint=r.hint or None,
                                 repair=rp.text if rp else None, repairArgv=list(rp.argv) if rp else None)
                            for r, rp in zip(rows, repairs) if args.all or not r.ok],
                   "repairAll": list(every.argv) if every else None}, sys.stdout, indent=2)
        print()
        return EXIT_REFUSED if bad else EXIT_OK
    containers = sum(len(v) for v in check.expected_state(stack.deployment).values())
    hosts = len({p.host.name for p in stack.deployment.plans()})
    if not bad:
        if args.all:
            sys.stdout.write(check.format_table(rows, repairs, show_all=True))
        print(f"stack {args.stack}: {containers} containers on {hosts} hosts, {len(rows)} checks: "
              f"everything matches the stack")
        return EXIT_OK
    sys.stdout.write(check.format_table(rows, repairs, show_all=args.all))
    if every and sum(1 for r in repairs if r) > 1:
        print(f"  all at once: {every.text}")
    print(f"\nstack {args.stack}: {len(bad)} of {len(rows)} checks differ "
          f"({containers} containers on {hosts} hosts)")
    return EXIT_REFUSED


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "import-ansible": ("write a stack config from an Omni-Infer Ansible inventory and server template",
                       _args_import_ansible, _cmd_import_ansible),
    "status": ("check every host against what the stack deployed (containers, images, health, proxy "
               "servers) and print the command repairing each difference; exit 1 when anything differs",
               _args_status, _cmd_status),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m pdstack", description="pdstack tools (the deployment itself is "
                                                                        "`bin/pulumi up`)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
