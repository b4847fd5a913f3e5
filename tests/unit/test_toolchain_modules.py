"""The three Go modules under tools/ pin the same version of every module they share: then the
language host's and the command provider's builds find those packages already compiled by the CLI's
build in Go's cache, which saves minutes of a fresh machine's `make setup` (and of `make bench`)."""
import re
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
REQUIRE = re.compile(r"^\s*(?:require\s+)?([\w.\-/~]+\.[\w.\-/~]+)\s+(v\S+)", re.M)


def pins(module: str) -> dict[str, str]:
    text = (TOOLS / module / "go.mod").read_text()
    return {m.group(1): m.group(2) for m in REQUIRE.finditer(text)}


def test_shared_dependencies_pin_the_cli_versions():
    cli = pins("pulumi-cli")
    assert "google.golang.org/grpc" in cli and "github.com/pulumi/pulumi/sdk/v3" in cli
    for module in ("pulumi-language-python", "pulumi-command"):
        mine = pins(module)
        differ = {dep: (v, cli[dep]) for dep, v in mine.items() if dep in cli and cli[dep] != v}
        assert not differ, (f"tools/{module}/go.mod pins other versions than tools/pulumi-cli/go.mod "
                            f"(theirs, the CLI's): {differ}; `go get dep@version` each in tools/{module}")
        assert len(set(mine) & set(cli)) > 0.9 * len(mine)
