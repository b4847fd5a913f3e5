"""The server template (`omni_infer_server_template_a3_ds.yml`): the play's `environment:` block, its
`vars:`, and the run scripts its tasks write, each value with its line."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .inventory import VarDef
from .report import Report, Source, fail
from .yamlfile import Loaded, YList, YMap, load

# Task lists of a play, and the keys of a task that hold more tasks.
_TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")
_NESTED = ("block", "rescue", "always")
_COPY = ("copy", "ansible.builtin.copy", "ansible.legacy.copy")
# The generated scripts whose settings map to engine settings: dest file name -> role.
RUN_SCRIPTS = {"vllm_run_for_p": "prefill", "vllm_run_for_d": "decode"}


@dataclass(frozen=True)
class ScriptText:
    """The `content:` of a copy task writing a run script."""
    dest: str
    block: YMap  # the copy task's arguments
    loaded: Loaded

    @property
    def text(self) -> str:
        return self.block["content"]

    def at(self, offset: int) -> Source:
        from .yamlfile import scalar_line
        return self.loaded.at(scalar_line(self.block, "content", offset))


@dataclass
class Template:
    path: str
    source: Source  # the play whose environment is used
    env: dict[str, VarDef] = field(default_factory=dict)
    play_vars: dict[str, VarDef] = field(default_factory=dict)
    scripts: dict[str, ScriptText] = field(default_factory=dict)  # role -> its run script


def read(path: str, report: Report) -> Template:
    loaded = load(path, "server template")
    doc = loaded.doc
    if not isinstance(doc, YList) or not doc or not all(isinstance(play, YMap) for play in doc):
        line = getattr(doc, "line", None)
        raise fail(loaded.at(line), "the server template is not an Ansible playbook: expected a list of plays, "
                                    "like the a3_ds template's `- name: run omniai` with `hosts: all` and an "
                                    "`environment:` block")
    for key, first, again in loaded.duplicates:
        report.warn(loaded.at(again), f"{key!r} is also set at line {first}; YAML keeps only this later one")
    with_env = [play for play in doc if "environment" in play]
    if not with_env:
        report.warn(loaded.at(doc.line), "no play has an `environment:` block; paths, image, container names and "
                                         "model settings keep pdstack's defaults")
        play = doc[0]
    else:
        play = with_env[0]
        for other in with_env[1:]:
            report.warn(loaded.at(other.key_lines["environment"]),
                        "a second play with an `environment:` block; only the first play's (line "
                        f"{play.key_lines['environment']}) is imported")
    template = Template(path, loaded.at(play.line))
    template.env = _vars(play, "environment", loaded, report)
    template.play_vars = _vars(play, "vars", loaded, report)
    if "vars_files" in play:
        report.warn(loaded.at(play.key_lines["vars_files"]),
                    "vars_files are not read by the import; put the variables it needs in the play's vars")
    for key in _TASK_LISTS:
        _scan_tasks(play.get(key), loaded, template, report)
    return template


def _vars(play: YMap, key: str, loaded: Loaded, report: Report) -> dict[str, VarDef]:
    block = play.get(key)
    if block is None:
        return {}
    if not isinstance(block, YMap):
        report.error(loaded.at(play.key_lines[key]), f"the play's {key} must be a map of name to value")
        return {}
    where = "environment" if key == "environment" else "play vars"
    return {str(k): VarDef(str(k), v, loaded.at(block.key_lines[k]), where) for k, v in block.items()}


def _scan_tasks(tasks: Any, loaded: Loaded, template: Template, report: Report) -> None:
    if not isinstance(tasks, YList):
        return
    for task in tasks:
        if not isinstance(task, YMap):
            continue
        for nested in _NESTED:
            _scan_tasks(task.get(nested), loaded, template, report)
        for module in _COPY:
            args = task.get(module)
            if not isinstance(args, YMap) or not isinstance(args.get("dest"), str):
                continue
            if not isinstance(args.get("content"), str):
                continue
            for stem, role in RUN_SCRIPTS.items():
                if stem in args["dest"] and role not in template.scripts:
                    template.scripts[role] = ScriptText(args["dest"], args, loaded)
