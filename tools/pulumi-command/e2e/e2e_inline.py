"""End-to-end check of pulumi-resource-command (pdstack build) with the real Pulumi engine.

Uses the Python Automation API in inline-program mode (no language host needed) against a throwaway sshd on
127.0.0.1 (run as root; sshd gets a private mount namespace with a tmpfs /run, so nothing on the host changes).

Environment:
  PDSTACK_PULUMI_CLI    path of the pulumi CLI binary (default: /root/.cache/pdstack/pulumi-cli-v3.274.1.partial/pulumi)
  PDSTACK_PROVIDER_DIR  directory holding pulumi-resource-command (default: /tmp/pc-out)
  E2E_INSTALL=cache     install the provider into the plugin cache instead of putting it on PATH
Run with the project's venv python (pulumi + pulumi_command installed). Exit code 0 = all checks passed.
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time, glob

import pulumi
import pulumi_command as command
from pulumi import automation as auto

T = tempfile.mkdtemp(prefix="pc-e2e-")
CLI_ROOT = os.path.join(T, "cli")
os.makedirs(os.path.join(CLI_ROOT, "bin"))
os.symlink(os.environ.get("PDSTACK_PULUMI_CLI", "/root/.cache/pdstack/pulumi-cli-v3.274.1.partial/pulumi"),
           os.path.join(CLI_ROOT, "bin", "pulumi"))
PROVIDER_DIR = os.environ.get("PDSTACK_PROVIDER_DIR", "/tmp/pc-out")

# --- throwaway sshd ---
sd = os.path.join(T, "sshd"); os.makedirs(sd)
subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{sd}/host"], check=True)
subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{sd}/client"], check=True)
shutil.copy(f"{sd}/client.pub", f"{sd}/authorized_keys")
s = socket.socket(); s.bind(("127.0.0.1", 0)); PORT = s.getsockname()[1]; s.close()
open(f"{sd}/sshd_config", "w").write(f"""Port {PORT}
ListenAddress 127.0.0.1
HostKey {sd}/host
PidFile {sd}/sshd.pid
AuthorizedKeysFile {sd}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv *
MaxSessions 20
LogLevel INFO
""")
sshd_log = open(f"{sd}/sshd.log", "w")
sshd = subprocess.Popen(["unshare", "-m", "sh", "-c",
                         f"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec /usr/sbin/sshd -f {sd}/sshd_config -D -e"],
                        stdout=sshd_log, stderr=sshd_log, start_new_session=True)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", PORT), 0.2).close(); break
    except OSError:
        time.sleep(0.05)
PRIVATE_KEY = open(f"{sd}/client").read()
HOST_KEY = open(f"{sd}/host.pub").read().strip()
KEY_BODY_LINES = [l for l in PRIVATE_KEY.splitlines() if l and not l.startswith("-----")]

WORK = os.path.join(T, "files"); os.makedirs(WORK)
params = {"create_suffix": "v1", "trigger": "t1"}

def program():
    cfg = pulumi.Config()
    key = cfg.require_secret("privateKey")
    conn = command.remote.ConnectionArgs(host="127.0.0.1", port=PORT, user="root", private_key=key,
                                         host_key=HOST_KEY, dial_error_limit=3)
    t = params["trigger"]
    f = f"{WORK}/out-{t}.txt"
    c = command.remote.Command("write-file", connection=conn,
        create=f'echo "hello-from-remote $PDSTACK_E2E"; echo {params["create_suffix"]} > {f}; cat {f}',
        delete=f'rm -f {f}; echo deleted {t} >> {WORK}/deletes.log',
        environment={"PDSTACK_E2E": "env-ok"},
        triggers=[t])
    pulumi.export("stdout", c.stdout)
    pulumi.export("stderr", c.stderr)

env = {
    "PATH": (f"{CLI_ROOT}/bin:" if os.environ.get("E2E_INSTALL") == "cache" else f"{PROVIDER_DIR}:{CLI_ROOT}/bin:") + os.environ["PATH"],
    "PULUMI_HOME": f"{T}/home",
    "PULUMI_BACKEND_URL": f"file://{T}/state",
    "PULUMI_CONFIG_PASSPHRASE": "test",
    "PULUMI_SKIP_UPDATE_CHECK": "true",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
}
os.makedirs(f"{T}/state"); os.makedirs(f"{T}/home")
os.environ.update(env)
if os.environ.get("E2E_INSTALL") == "cache":
    subprocess.run(["tar", "-C", PROVIDER_DIR, "-czf", f"{T}/prov.tgz", "pulumi-resource-command"], check=True)
    subprocess.run([f"{CLI_ROOT}/bin/pulumi", "plugin", "install", "resource", "command", "v1.2.1", "--file", f"{T}/prov.tgz"], check=True)
ALL_OUTPUT = []
def out(s):
    ALL_OUTPUT.append(s)
    sys.stdout.write(s if s.endswith("\n") else s + "\n")

failures = []
def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)

try:
    ws_opts = auto.LocalWorkspaceOptions(
        work_dir=f"{T}/proj",
        pulumi_command=auto.PulumiCommand(root=CLI_ROOT, skip_version_check=True),
        env_vars=env,
        project_settings=auto.ProjectSettings(name="pce2e", runtime="python",
                                              backend=auto.ProjectBackend(url=f"file://{T}/state")),
        secrets_provider="passphrase")
    os.makedirs(f"{T}/proj")
    stack = auto.create_or_select_stack(stack_name="dev", project_name="pce2e", program=program, opts=ws_opts)
    stack.set_config("privateKey", auto.ConfigValue(value=PRIVATE_KEY, secret=True))

    # 1. preview of a new stack: no SSH.
    pv = stack.preview(on_output=out, diff=True)
    check(pv.change_summary.get("create") == 2, f"initial preview creates stack+command: {pv.change_summary}")
    check(not glob.glob(f"{WORK}/out-*"), "preview ran nothing")

    # 2. up
    r = stack.up(on_output=out)
    check(r.summary.result == "succeeded", "up succeeded")
    check(open(f"{WORK}/out-t1.txt").read() == "v1\n", "file written by create")
    check(r.outputs["stdout"].value == "hello-from-remote env-ok\nv1", f"stdout output: {r.outputs['stdout'].value!r}")
    check("hello-from-remote env-ok" in r.stdout, "command output streamed to the engine log")

    # 3. change create -> update in place
    params["create_suffix"] = "v2"
    pv = stack.preview(on_output=out, diff=True)
    check(pv.change_summary.get("update") == 1 and "replace" not in pv.change_summary,
          f"changing create previews as an update: {pv.change_summary}")
    check("~ create: " in pv.stdout, "preview --diff names the changed property (~ create)")
    r = stack.up(on_output=out)
    check(r.summary.resource_changes.get("update") == 1, f"up updated: {r.summary.resource_changes}")
    check(open(f"{WORK}/out-t1.txt").read() == "v2\n", "update re-ran create")
    check(r.outputs["stdout"].value.endswith("v2"), "stdout updated")

    # 4. change triggers -> replace (create-before-delete)
    params["trigger"] = "t2"
    pv = stack.preview(on_output=out, diff=True)
    check(pv.change_summary.get("replace") == 1, f"changing triggers previews as a replace: {pv.change_summary}")
    check("~ triggers: " in pv.stdout, "preview --diff names triggers")
    r = stack.up(on_output=out)
    check(r.summary.resource_changes.get("replace") == 1, f"up replaced: {r.summary.resource_changes}")
    check(os.path.exists(f"{WORK}/out-t2.txt") and not os.path.exists(f"{WORK}/out-t1.txt"),
          "replace: new create ran, old delete ran")
    check(open(f"{WORK}/deletes.log").read() == "deleted t1\n", "old delete ran once")

    # 5. refresh is a no-op
    rr = stack.refresh(on_output=out)
    check(rr.summary.result == "succeeded", "refresh succeeded")

    # 6. a failing update reports exit status and output
    params["create_suffix"] = "v3; echo failing-output >&2; exit 5"
    try:
        stack.up(on_output=out)
        check(False, "failing up raised")
    except auto.CommandError as e:
        msg = str(e)
        check("status 5" in msg and "failing-output" in msg, "failed update error has exit status and output tail")
    params["create_suffix"] = "v2"
    r = stack.up(on_output=out)
    check(r.summary.result == "succeeded", "recovered after failure")

    # 7. state must not contain the private key in clear
    state_files = [os.path.join(dp, f) for dp, _, fs in os.walk(f"{T}/state") for f in fs]
    cur = [p for p in state_files if p.endswith("stacks/pce2e/dev.json")]
    if cur:
        st = json.load(open(cur[0]))
        for res in st["checkpoint"]["latest"]["resources"]:
            if res["type"] == "command:remote:Command":
                print("STATE inputs.connection:", json.dumps(res["inputs"]["connection"])[:200])
                print("STATE outputs keys:", sorted(res["outputs"]), "stdout:", res["outputs"].get("stdout"))
    state_text = "".join(open(p).read() for p in state_files)
    check(any("connection" in open(p).read() for p in state_files), "state file found")
    leaked = [l for l in KEY_BODY_LINES if l in state_text]
    check(not leaked, f"private key absent from state ({len(state_files)} files)")

    # 8. destroy runs delete
    d = stack.destroy(on_output=out)
    check(d.summary.result == "succeeded", "destroy succeeded")
    check(not os.path.exists(f"{WORK}/out-t2.txt"), "destroy ran delete (file removed)")
    check(open(f"{WORK}/deletes.log").read() == "deleted t1\ndeleted t2\n", "delete log after destroy")

    all_out = "".join(ALL_OUTPUT)
    leaked = [l for l in KEY_BODY_LINES if l in all_out]
    check(not leaked, "private key absent from all CLI output")

    # 9. many commands against one host in parallel share a few connections
    N = 20
    def par_program():
        key = pulumi.Config().require_secret("privateKey")
        conn = command.remote.ConnectionArgs(host="127.0.0.1", port=PORT, private_key=key, host_key=HOST_KEY)
        for i in range(N):
            command.remote.Command(f"c{i}", connection=conn, create=f"sleep 1; echo {i}", delete="true",
                                   add_previous_output_in_env=False)
    par = auto.create_or_select_stack(stack_name="par", project_name="pce2e", program=par_program, opts=ws_opts)
    par.set_config("privateKey", auto.ConfigValue(value=PRIVATE_KEY, secret=True))
    before = open(f"{sd}/sshd.log").read().count("Accepted publickey")
    t0 = time.time()
    r = par.up(parallel=32, on_output=out)
    took = time.time() - t0
    conns = open(f"{sd}/sshd.log").read().count("Accepted publickey") - before
    check(r.summary.result == "succeeded" and conns <= 4,
          f"{N} parallel commands used {conns} SSH connection(s), up took {took:.1f}s")
    par.destroy(parallel=32, on_output=out)
finally:
    os.killpg(sshd.pid, signal.SIGTERM)
    sshd.wait(timeout=10)

if not failures:
    shutil.rmtree(T, ignore_errors=True)
else:
    print("work dir kept:", T)
print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
