// pulumi-language-python is pdstack's own, minimal Pulumi language host for Python programs.
//
// The upstream host cannot be fetched from the Go module proxy available to us, so this program implements the
// subset of the LanguageRuntime gRPC service that `pulumi preview/up/destroy/stack/config/about/plugin ls` need for a
// pip + virtualenv project. The actual program is executed by the `pulumi-language-python-exec` shim that ships with
// the Python SDK; it must sit next to this binary.
//
// The engine starts us as `pulumi-language-python [--logtostderr] [-v=N] [--tracing URL] <engine-address>` and reads
// the port we serve on from the first line of our stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// version is what GetPluginInfo reports; it is our own version, not the Pulumi SDK's.
const version = "0.1.0"

// bailExitCode is the exit status the exec shim uses after it has already logged the error to the engine
// (PYTHON_PROCESS_EXITED_AFTER_SHOWING_USER_ACTIONABLE_MESSAGE_CODE in pulumi-language-python-exec).
const bailExitCode = 32

func main() {
	engineAddr, tracing, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
		os.Exit(2)
	}
	shim, err := execShimPath()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
		os.Exit(1)
	}

	host := &host{engineAddr: engineAddr, tracing: tracing, shim: shim}

	// Stop serving when the engine goes away, so that we never outlive it as an orphan.
	ctx, stop := context.WithCancel(context.Background())
	cancel := make(chan bool)
	go func() { <-ctx.Done(); close(cancel) }()
	if err := rpcutil.Healthcheck(ctx, engineAddr, 5*time.Minute, stop); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: could not watch engine: %v\n", err)
		os.Exit(1)
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
		Options: rpcutil.TracingServerInterceptorOptions(nil),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
		os.Exit(1)
	}
	// The engine reads exactly this line to learn where to connect.
	fmt.Printf("%d\n", handle.Port)

	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
		os.Exit(1)
	}
}

// parseArgs extracts the engine address (always the last argument) and the optional tracing endpoint. Every other
// flag the engine may pass (--logtostderr, -v=N, or flags of older engines) is accepted and ignored, which the
// standard flag package would not allow.
func parseArgs(args []string) (engineAddr, tracing string, err error) {
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		return "", "", errors.New("usage: pulumi-language-python [flags] <engine-address>")
	}
	for i := 0; i < len(args)-1; i++ {
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if name == "tracing" {
			if !hasValue && i+1 < len(args)-1 {
				i++
				value = args[i]
			}
			tracing = value
		}
	}
	return args[len(args)-1], tracing, nil
}

// execShimPath finds pulumi-language-python-exec next to our own (symlink-resolved) executable.
func execShimPath() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return "", err
	}
	shim := filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	if _, err := os.Stat(shim); err != nil {
		return "", fmt.Errorf("exec shim missing: %w", err)
	}
	return shim, nil
}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	mu         sync.Mutex
	engineAddr string // replaced by the address from Handshake, which is authoritative
	tracing    string
	shim       string
}

func (h *host) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest) (
	*pulumirpc.LanguageHandshakeResponse, error,
) {
	if req.GetEngineAddress() != "" {
		h.mu.Lock()
		h.engineAddr = req.GetEngineAddress()
		h.mu.Unlock()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (h *host) RuntimeOptionsPrompts(context.Context, *pulumirpc.RuntimeOptionsRequest) (
	*pulumirpc.RuntimeOptionsResponse, error,
) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

// python describes the interpreter a program runs with.
type python struct {
	exe  string // interpreter path (absolute when it exists)
	venv string // virtualenv directory, or "" when using a system interpreter
}

// pythonFor resolves the interpreter from the project's runtime options: `virtualenv` (relative to the project root)
// wins; otherwise $PULUMI_PYTHON_CMD, python3 or python from PATH.
func pythonFor(info *pulumirpc.ProgramInfo) (python, error) {
	opts := info.GetOptions().AsMap()
	toolchain, _ := opts["toolchain"].(string)
	venv, _ := opts["virtualenv"].(string)
	switch toolchain {
	case "", "pip":
	case "uv":
		if venv == "" {
			venv = ".venv" // uv's default project environment
		}
	default:
		return python{}, fmt.Errorf("python toolchain %q is not supported by this language host (use pip)", toolchain)
	}

	if venv != "" {
		if !filepath.IsAbs(venv) {
			venv = filepath.Join(info.GetRootDirectory(), venv)
		}
		return python{exe: filepath.Join(venv, "bin", "python"), venv: venv}, nil
	}

	candidates := []string{"python3", "python"}
	if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
		candidates = []string{cmd}
	}
	for _, c := range candidates {
		if exe, err := exec.LookPath(c); err == nil {
			return python{exe: exe}, nil
		}
	}
	return python{}, fmt.Errorf("no Python interpreter found (tried %s)", strings.Join(candidates, ", "))
}

// env returns the environment for child processes: the virtualenv is "activated" the same way its activate script
// would do it, so that subprocesses started by the program find the venv's tools first.
func (p python) env(extra ...string) []string {
	env := os.Environ()
	if p.venv != "" {
		env = append(env,
			"VIRTUAL_ENV="+p.venv,
			"PATH="+filepath.Join(p.venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
		env = withoutVar(env, "PYTHONHOME")
	}
	return append(env, extra...)
}

func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// checkExists gives a clear message instead of an exec error when the virtualenv has not been created yet.
func (p python) checkExists() error {
	if _, err := os.Stat(p.exe); err != nil {
		if p.venv != "" {
			return fmt.Errorf("the virtualenv %s does not exist or has no bin/python; create it with "+
				"`python3 -m venv` and `pip install -r requirements.txt`", p.venv)
		}
		return err
	}
	return nil
}

// sysPath asks the interpreter for its import path, so that venvs, user site dirs and PYTHONPATH are all honoured.
func (p python) sysPath(ctx context.Context) ([]string, error) {
	if err := p.checkExists(); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, p.exe, "-c", "import json, sys; print(json.dumps(sys.path))")
	cmd.Env = p.env()
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("querying sys.path of %s: %w", p.exe, err)
	}
	var dirs []string
	if err := json.Unmarshal(out, &dirs); err != nil {
		return nil, fmt.Errorf("parsing sys.path of %s: %w", p.exe, err)
	}
	return dirs, nil
}

// pluginJSON is the pulumi-plugin.json that generated Pulumi provider SDKs ship inside their Python package.
type pluginJSON struct {
	Resource         bool               `json:"resource"`
	Name             string             `json:"name"`
	Version          string             `json:"version"`
	Server           string             `json:"server"`
	Parameterization *parameterizationJ `json:"parameterization"`
}

type parameterizationJ struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Value   []byte `json:"value"` // base64 in JSON
}

// requiredPackages lists the resource plugins needed by the packages importable by the program's interpreter: every
// top-level package with a pulumi-plugin.json saying "resource": true. The first occurrence on sys.path wins, as it
// would for `import`.
func requiredPackages(ctx context.Context, info *pulumirpc.ProgramInfo) ([]*pulumirpc.PackageDependency, error) {
	py, err := pythonFor(info)
	if err != nil {
		return nil, err
	}
	dirs, err := py.sysPath(ctx)
	if err != nil {
		return nil, err
	}
	seenModule := map[string]bool{}
	var deps []*pulumirpc.PackageDependency
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*", "pulumi-plugin.json"))
		for _, file := range files {
			module := filepath.Base(filepath.Dir(file))
			if seenModule[module] {
				continue
			}
			seenModule[module] = true
			data, err := os.ReadFile(file)
			if err != nil {
				return nil, err
			}
			var pj pluginJSON
			if err := json.Unmarshal(data, &pj); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			if !pj.Resource {
				continue
			}
			if pj.Name == "" { // e.g. pulumi_random -> random
				pj.Name = strings.ReplaceAll(strings.TrimPrefix(module, "pulumi_"), "_", "-")
			}
			dep := &pulumirpc.PackageDependency{
				Kind: "resource", Name: pj.Name, Version: pj.Version, Server: pj.Server,
			}
			if p := pj.Parameterization; p != nil {
				dep.Parameterization = &pulumirpc.PackageParameterization{
					Name: p.Name, Version: p.Version, Value: p.Value,
				}
			}
			deps = append(deps, dep)
		}
	}
	sort.Slice(deps, func(i, j int) bool { return deps[i].Name < deps[j].Name })
	return deps, nil
}

func (h *host) GetRequiredPackages(ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest) (
	*pulumirpc.GetRequiredPackagesResponse, error,
) {
	deps, err := requiredPackages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: deps}, nil
}

// GetRequiredPlugins is the deprecated predecessor of GetRequiredPackages, kept for older engines.
func (h *host) GetRequiredPlugins(ctx context.Context, req *pulumirpc.GetRequiredPluginsRequest) (
	*pulumirpc.GetRequiredPluginsResponse, error,
) {
	deps, err := requiredPackages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	resp := &pulumirpc.GetRequiredPluginsResponse{}
	for _, d := range deps {
		if d.Parameterization == nil { // parameterized packages cannot be expressed as plain plugins
			resp.Plugins = append(resp.Plugins, &pulumirpc.PluginDependency{
				Name: d.Name, Kind: d.Kind, Version: d.Version, Server: d.Server,
			})
		}
	}
	return resp, nil
}

// streamWriter forwards a child's output to an InstallDependencies stream. gRPC streams are not safe for concurrent
// Send, and stdout and stderr are copied by separate goroutines, hence the shared lock.
type streamWriter struct {
	mu     *sync.Mutex
	stream grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse]
	stderr bool
}

func (w streamWriter) Write(b []byte) (int, error) {
	msg := &pulumirpc.InstallDependenciesResponse{}
	data := append([]byte(nil), b...) // the caller may reuse b after we return
	if w.stderr {
		msg.Stderr = data
	} else {
		msg.Stdout = data
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.stream.Send(msg); err != nil {
		return 0, err
	}
	return len(b), nil
}

// InstallDependencies (`pulumi install`, `pulumi new`) creates a missing virtualenv and installs requirements.txt
// into it. An existing virtualenv is left alone: pdstack provisions and upgrades its environment itself.
func (h *host) InstallDependencies(req *pulumirpc.InstallDependenciesRequest,
	stream grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	info := req.GetInfo()
	py, err := pythonFor(info)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	stdout := streamWriter{mu: &mu, stream: stream}
	stderr := streamWriter{mu: &mu, stream: stream, stderr: true}

	if py.venv == "" {
		fmt.Fprintln(stdout, "No virtualenv configured in Pulumi.yaml; not installing dependencies.")
		return nil
	}
	if _, err := os.Stat(py.exe); err == nil {
		return nil
	}

	run := func(name string, args ...string) error {
		fmt.Fprintf(stdout, "$ %s %s\n", name, strings.Join(args, " "))
		cmd := exec.CommandContext(stream.Context(), name, args...)
		cmd.Dir = info.GetRootDirectory()
		cmd.Stdout, cmd.Stderr = stdout, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		}
		return nil
	}

	base, err := pythonFor(&pulumirpc.ProgramInfo{}) // the system interpreter: no venv options
	if err != nil {
		return err
	}
	if err := run(base.exe, "-m", "venv", py.venv); err != nil {
		return err
	}
	for _, dir := range []string{info.GetRootDirectory(), info.GetProgramDirectory()} {
		reqs := filepath.Join(dir, "requirements.txt")
		if _, err := os.Stat(reqs); err == nil {
			return run(py.exe, "-m", "pip", "install", "-r", reqs)
		}
	}
	fmt.Fprintln(stdout, "No requirements.txt found; the virtualenv is empty.")
	return nil
}

// Run executes the program through the SDK's exec shim, which connects the Python SDK to the engine. The shim's
// output is inherited so that the engine sees it exactly as it sees our own output.
func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	py, err := pythonFor(info)
	if err == nil {
		err = py.checkExists()
	}
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	h.mu.Lock()
	engineAddr := h.engineAddr
	h.mu.Unlock()

	// Every value is passed only when set: the shim treats a present-but-empty --pwd as a directory to chdir into.
	// --parallel is always passed because the shim calls int() on it unconditionally.
	args := []string{"-u", h.shim, "--parallel", strconv.Itoa(int(req.GetParallel())),
		"--dry_run", strconv.FormatBool(req.GetDryRun())}
	for _, kv := range [][2]string{
		{"--monitor", req.GetMonitorAddress()},
		{"--engine", engineAddr},
		{"--project", req.GetProject()},
		{"--stack", req.GetStack()},
		{"--pwd", req.GetPwd()},
		{"--organization", req.GetOrganization()},
		{"--root_directory", info.GetRootDirectory()},
		{"--tracing", h.tracing},
	} {
		if kv[1] != "" {
			args = append(args, kv[0], kv[1])
		}
	}
	// The program is the program directory (runpy runs its __main__.py) or the `main` file inside it.
	program := filepath.Join(info.GetProgramDirectory(), info.GetEntryPoint())
	if info.GetProgramDirectory() == "" {
		program = req.GetProgram() //nolint:staticcheck // older engines only send the deprecated field
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	// Config reaches the SDK as JSON in the environment (pulumi/runtime/config.py). Empty values must still be
	// `{}` and `[]`, because the SDK iterates over them and a Go nil would be marshalled as `null`.
	configMap := map[string]string{}
	maps.Copy(configMap, req.GetConfig())
	config, err := json.Marshal(configMap)
	if err != nil {
		return nil, err
	}
	secrets, err := json.Marshal(append([]string{}, req.GetConfigSecretKeys()...))
	if err != nil {
		return nil, err
	}

	cmd := exec.Command(py.exe, args...)
	cmd.Dir = req.GetPwd()
	cmd.Env = py.env("PULUMI_CONFIG="+string(config), "PULUMI_CONFIG_SECRET_KEYS="+string(secrets))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr

	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == bailExitCode:
		// The shim already logged the error through the engine; don't report it twice.
		return &pulumirpc.RunResponse{Error: "program exited after reporting its error", Bail: true}, nil
	case errors.As(err, &exitErr):
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
		}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("running %s: %v", py.exe, err)}, nil
	}
}

func (h *host) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	py, err := pythonFor(req.GetInfo())
	if err == nil {
		err = py.checkExists()
	}
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, py.exe, "--version")
	cmd.Env = py.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", py.exe, err)
	}
	meta := map[string]string{"toolchain": "pip"}
	if py.venv != "" {
		meta["virtualenv"] = py.venv
	}
	return &pulumirpc.AboutResponse{
		Executable: py.exe,
		Version:    strings.TrimPrefix(strings.TrimSpace(string(out)), "Python "),
		Metadata:   meta,
	}, nil
}

// GetProgramDependencies lists the distributions installed for the interpreter, read from their *.dist-info
// directories (name-version.dist-info) rather than by running pip, which is slow and may not be installed.
func (h *host) GetProgramDependencies(ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest) (
	*pulumirpc.GetProgramDependenciesResponse, error,
) {
	py, err := pythonFor(req.GetInfo())
	if err != nil {
		return nil, err
	}
	dirs, err := py.sysPath(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	resp := &pulumirpc.GetProgramDependenciesResponse{}
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		infos, _ := filepath.Glob(filepath.Join(dir, "*.dist-info"))
		for _, d := range infos {
			name, ver, ok := strings.Cut(strings.TrimSuffix(filepath.Base(d), ".dist-info"), "-")
			if !ok || seen[name] {
				continue
			}
			seen[name] = true
			resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: name, Version: ver})
		}
	}
	sort.Slice(resp.Dependencies, func(i, j int) bool { return resp.Dependencies[i].Name < resp.Dependencies[j].Name })
	return resp, nil
}
