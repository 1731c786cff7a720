#!/usr/bin/env python3
"""Every command the documents tell a reader to run must exist as written.

  check_docs.py --issuer-worker BIN --ngrinder-equivalent BIN [FILE.md...]

Reads README.md and docs/*.md (or the files given) and takes out each shell
command they show: the lines of ```sh, ```bash, ```console and ```shell
blocks (in a block with `$ ` prompts, only the prompted lines and their
continuations), and inline code that starts with a command (`scripts/...`,
`issuer-worker ...`, `ngrinder-equivalent ...`, `cargo ...`, or one of the
worker's own commands: `reconcile`, `rebuild`, `dlq`, `campaigns`). Then:

  scripts     every `scripts/<name>` named anywhere exists; one run as a
              command is executable, its first word is one of the script's
              commands when its header lists some (`scripts/stack up`), and
              each flag it is given appears in its header (usage) or in its
              argument parsing; arguments after `--`, or after a command
              whose usage says ARGS..., are passed on and not checked;
  binaries    `issuer-worker ...` and `ngrinder-equivalent ...` (also as
              `target/*/...`, `$VAR` set to one in the same block, `cargo run
              -p X -- ...`, `docker compose run <service>` of their image, or
              after `--`): each subcommand exists, and each flag appears in
              the `--help` of that subcommand path, run on the built binary;
  cargo       `-p <package>` names a workspace package; `--bench`/`--test`
              name one of its targets; a `cargo bench --bench X -- FILTER`'s
              filter (a regex, as criterion reads it) matches one of X's
              benchmark names;
  settings    docs/DEPLOY.md's settings table (its "## Settings" section)
              names every variable `issuer-worker settings --names` prints,
              and nothing else (`APP_X__*` covers a prefix; APP_CONFIG_FILE).

Placeholders are allowed wherever an argument goes: `<id>`, `$C`, `N`,
`[--flag V]` (brackets and `(a | b)` alternatives are synopsis), `a|b|c`
(each alternative is checked), `...`. Each failure is printed as
file:line: what; the exit status is 1 if there was any.
"""
import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BINARIES = ("issuer-worker", "ngrinder-equivalent")
# The worker's own commands, as the runbook names them without the binary.
WORKER_SHORTHAND = {"reconcile", "rebuild", "dlq", "campaigns"}
SHELL_LANGS = {"sh", "bash", "console", "shell", "shell-session"}
WRAPPERS = {"sudo", "exec", "nohup", "time", "env", "command", "then", "do", "else", "!", "{"}


class Failures:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


# --- Reading the documents ---------------------------------------------------


def doc_files(given):
    if given:
        return given
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def rel(path):
    return os.path.relpath(path, ROOT)


def commands_of(path):
    """(line, command text, origin) for every command the document shows;
    origin is 'block' or 'inline'."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found = []
    prose = []  # (line number, text) outside fenced blocks
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w-]*)", lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        marker, lang = fence.group(2), fence.group(3).lower()
        body = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(marker):
            body.append((j + 1, lines[j]))
            j += 1
        if lang in SHELL_LANGS:
            found.extend((n, text, "block") for n, text in block_commands(body))
        i = j + 1
    found.extend(inline_commands(prose))
    return found


def block_commands(body):
    """The commands of a shell block, continuations joined."""
    prompted = any(re.match(r"^\s*\$ ", text) for _, text in body)
    out = []
    current = None  # [line, text]
    for n, text in body:
        stripped = text.strip()
        if current is not None and current[1].endswith("\\"):
            current[1] = current[1][:-1] + " " + stripped
            continue
        if prompted:
            m = re.match(r"^\s*\$ (.*)$", text)
            if m:
                current = [n, m.group(1).strip()]
                out.append(current)
            else:
                current = None  # output
            continue
        if not stripped or stripped.startswith("#"):
            continue
        # A synopsis continued on an indented line: `    [--flag V] ...`.
        if current is not None and text[:1].isspace() and re.match(r"^[\[(-]", stripped):
            current[1] += " " + stripped
            continue
        current = [n, stripped]
        out.append(current)
    return [(n, t) for n, t in out]


def inline_commands(prose):
    """Inline code spans (which may run over lines) that start with a command."""
    text = "\n".join(t for _, t in prose)
    starts = []
    offset = 0
    for n, t in prose:
        starts.append((offset, n))
        offset += len(t) + 1
    out = []
    for m in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)", text):
        content = " ".join(m.group(1).split())
        line = line_at(starts, m.start())
        if prose_line(prose, line).lstrip().startswith("|"):
            # A table cell: `\|` is GitHub's escape for a pipe in a cell.
            content = content.replace("\\|", "|")
        if is_command_span(content):
            out.append((line, content, "inline"))
    return out


def prose_line(prose, line):
    for n, text in prose:
        if n == line:
            return text
    return ""


def line_at(starts, pos):
    line = starts[0][1] if starts else 1
    for offset, n in starts:
        if offset > pos:
            break
        line = n
    return line


def is_command_span(content):
    words = strip_assignments(content.split())
    if not words:
        return False
    first = words[0]
    if re.match(r"^(\./)?scripts/[\w.-]+$", first) or first.startswith("$ROOT/scripts/"):
        return True
    if os.path.basename(first) in BINARIES or first == "cargo":
        return len(words) > 1 or os.path.basename(first) in BINARIES
    return first in WORKER_SHORTHAND and len(words) > 1


def strip_assignments(words):
    i = 0
    while i < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[i]):
        i += 1
    return words[i:]


def script_mentions(path):
    """(line, name) of every `scripts/<name>` the document names."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            for m in re.finditer(r"(?<![\w./-])(?:\./)?scripts/([A-Za-z0-9_.-]*[A-Za-z0-9_])", text):
                out.append((n, m.group(1)))
    return out


# --- Splitting a command line ----------------------------------------------------


class Word(str):
    """A word of a command, and whether any of it was quoted."""

    def __new__(cls, text, quoted=False):
        word = super().__new__(cls, text)
        word.quoted = quoted
        return word


def tokenize(text):
    """Shell-like words and operators: quotes removed (a quoted word keeps
    its text), `$(...)` and backquotes kept whole as one word (their inside is
    returned separately as nested commands), `(`/`)` of subshells and
    synopsis kept as words, comments dropped."""
    words, nested = [], []
    word, quoted, i = "", False, 0
    n = len(text)

    def flush():
        nonlocal word, quoted
        if word or quoted:
            words.append(Word(word, quoted))
        word, quoted = "", False

    while i < n:
        c = text[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "#" and not word and not quoted:
            break
        elif c == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            word += text[i + 1 : j]
            quoted = True
            i = j + 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 1
                elif text[j : j + 2] == "$(":
                    k = matching_paren(text, j + 1)
                    nested.append(text[j + 2 : k])
                    j = k
                j += 1
            word += text[i + 1 : min(j, n)]
            quoted = True
            i = j + 1
        elif c == "\\" and i + 1 < n:
            word += text[i + 1]
            i += 2
        elif text.startswith("$(", i):
            k = matching_paren(text, i + 1)
            nested.append(text[i + 2 : k])
            word += "$(…)"
            i = k + 1
        elif c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            nested.append(text[i + 1 : j])
            word += "$(…)"
            i = j + 1
        elif c in "|&;()<>":
            # `a|b` with no spaces is a synopsis' alternatives, not a pipe;
            # `<id>` is a placeholder, not a redirection.
            if c == "|" and word and i + 1 < n and re.match(r"[\w-]", text[i + 1]) and text[i - 1] not in " |":
                word += c
                i += 1
                continue
            if c == "<" and re.match(r"<[\w .:/…-]+>", text[i:]):
                k = text.index(">", i)
                word += text[i : k + 1]
                i = k + 1
                continue
            if c == ">" and word.endswith(("2", "1", "&")) and len(word) == 1:
                word += c
                i += 1
                continue
            flush()
            op = c
            while i + len(op) < n and text[i + len(op)] in "|&;<>" and len(op) < 3 and c not in "()":
                op += text[i + len(op)]
            words.append(("op", op))
            i += len(op)
        else:
            word += c
            i += 1
    flush()
    return words, nested


def matching_paren(text, open_at):
    depth, i = 0, open_at
    while i < len(text):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        elif text[i] in "'\"":
            j = text.find(text[i], i + 1)
            i = j if j > 0 else i
        i += 1
    return len(text)


def simple_commands(text):
    """The simple commands of a line: lists of words, split on pipes and
    lists; a subshell's inside is its own commands; redirections dropped;
    synopsis brackets, parentheses and alternatives' bars removed."""
    # A synopsis' alternatives in brackets, `[--a | --b]`, are no pipe.
    while True:
        joined = re.sub(r"(\[[^\]|]*)\s\|\s([^\]]*\])", r"\1 \2", text)
        if joined == text:
            break
        text = joined
    words, nested = tokenize(text)
    out = []
    for inner in nested:
        out.extend(simple_commands(inner))
    current, depth = [], 0
    i = 0
    while i < len(words):
        w = words[i]
        if isinstance(w, tuple):
            op = w[1]
            if op == "(":
                depth += 1
                current.append("(")
            elif op == ")":
                depth = max(0, depth - 1)
                current.append(")")
            elif op in ("|", "||", "&&", ";", "&", ";;", "|&") and depth == 0:
                out.append(current)
                current = []
            elif op in ("|", "||") and depth > 0:
                current.append("|")
            elif op[0] in "<>" or op.endswith(">"):
                i += 1  # the redirection's target
            elif op in (";", "&&", "&", ";;"):
                current.append(op)
        elif re.match(r"^\d?>>?|^&>|^<[^\w<]|^<$", w) and not re.match(r"^<[\w .:/…-]+>", w):
            pass  # a redirection with its target attached (>file, 2>&1)
        else:
            current.append(w)
        i += 1
    out.append(current)
    result = []
    for words in out:
        result.extend(split_subshell(words))
    return [w for w in result if w]


def split_subshell(words):
    """A command that is a subshell `( a; b )` is its commands; otherwise
    the words without synopsis marks."""
    if words and words[0] == "(":
        inner, depth = [], 0
        cmds, current = [], []
        for w in words[1:]:
            if w == "(":
                depth += 1
            if w == ")":
                if depth == 0:
                    break
                depth -= 1
            if w in (";", "&&", "&", ";;", "|") and depth == 0:
                cmds.append(current)
                current = []
            else:
                current.append(w)
        cmds.append(current)
        out = []
        for c in cmds:
            out.extend(split_subshell(c))
        return out
    cleaned = []
    for w in words:
        if w in ("(", ")", "|", ";", "&&", "&", ";;", "...", "…"):
            continue
        if getattr(w, "quoted", False):
            cleaned.append(w)
            continue
        w = w.strip("[]")
        w = re.sub(r"(\.\.\.|…)$", "", w)
        if w.startswith("(") and not w.startswith("$("):
            w = w.lstrip("(")
        if w:
            cleaned.append(w)
    return [cleaned]


def alternatives(words):
    """Every command a synopsis with `a|b` words stands for."""
    for i, w in enumerate(words):
        if "|" in w and not getattr(w, "quoted", False) and re.match(r"^[\w.-]+(\|[\w.-]+)+$", w):
            out = []
            for alt in w.split("|"):
                out.extend(alternatives(words[:i] + [alt] + words[i + 1 :]))
            return out
    return [words]


def is_placeholder(word):
    return bool(
        re.match(r"^<.*>$", word)
        or "$" in word
        or "…" in word
        or re.match(r"^[A-Z][A-Z0-9_:]*$", word)
    )


# --- Scripts --------------------------------------------------------------------


class Script:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.header = header_of(text, path.endswith(".py"))
        parsing = []
        for line in text.split("\n"):
            if "add_argument(" in line or "add_parser(" in line:
                parsing.append(line)
            elif re.match(r"^\s*[^#\s][^#]*\)(\s|$)", line) and re.search(r"(^|[\s|(])-{1,2}[\w-]+\s*[|)]", line):
                parsing.append(line)
        self.parsing = "\n".join(parsing)
        self.commands, self.passes_on = self.usage()

    def usage(self):
        """The commands the header's usage lines name, and those whose
        arguments are passed on (ARGS...)."""
        commands, passes_on = set(), set()
        base = re.escape(self.name)
        for line in self.header.split("\n"):
            m = re.match(rf"^\s*(?:\S*/)?{base}\s+(.*)$", line)
            if not m:
                continue
            rest = m.group(1).split()
            if not rest or not re.match(r"^[a-z][\w-]*$", rest[0]):
                continue
            names = [rest[0]]
            k = 1
            while k + 1 < len(rest) and rest[k] == "|" and re.match(r"^[a-z][\w-]*$", rest[k + 1]):
                names.append(rest[k + 1])
                k += 2
            commands.update(names)
            if re.search(r"\bARGS(\.\.\.|…)|<args>", " ".join(rest[k:])):
                passes_on.update(names)
        return commands, passes_on

    def knows_flag(self, flag):
        pattern = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"
        return bool(re.search(pattern, self.header) or re.search(pattern, self.parsing))


def header_of(text, python):
    if python:
        m = re.search(r'^(?:#![^\n]*\n)?(?:#[^\n]*\n)*\s*("""|\'\'\')(.*?)\1', text, re.S)
        return m.group(2) if m else ""
    lines = text.split("\n")
    out = []
    for line in lines[1:] if lines and lines[0].startswith("#!") else lines:
        if not line.startswith("#"):
            break
        out.append(line[1:])
    return "\n".join(out)


def check_script(where, words, scripts, failures, reference=False):
    """words[0] is the script's path."""
    path = script_path(words[0])
    name = os.path.relpath(path, ROOT)
    if not os.path.isfile(path):
        failures.add(where, f"{name}: no such script")
        return
    with open(path, "rb") as f:
        runnable = f.read(2) == b"#!"
    # A library named alone (`scripts/lib.sh`, sourced, no `#!`) is only
    # referred to; anything run must be executable.
    if (runnable or len(words) > 1 or not reference) and not os.access(path, os.X_OK):
        failures.add(where, f"{name} is not executable")
    script = scripts.setdefault(path, Script(path))
    args = words[1:]
    # Its command, if its usage names commands: the first word, when it is
    # a plain word and no flag comes before it.
    command = args[0] if args and re.match(r"^[a-z][\w-]*$", args[0]) else None
    if script.commands and command is not None and command not in script.commands:
        failures.add(where, f"{name} has no command {command!r} (its usage: {', '.join(sorted(script.commands))})")
    for i, a in enumerate(args):
        if a == "--" or (i > 0 and command in script.passes_on):
            break
        if re.match(r"^-{1,2}[A-Za-z]", a):
            flag = a.split("=", 1)[0]
            if not script.knows_flag(flag):
                failures.add(where, f"{name}: {flag} is in neither its usage header nor its argument parsing")


def script_path(word):
    word = re.sub(r"^(\$ROOT|\$\{ROOT\}|\.)/", "", word)
    return os.path.join(ROOT, word)


# --- Binaries ---------------------------------------------------------------------


class Help:
    """What `--help` of one subcommand path says: its commands, and its
    options with whether each takes a value."""

    def __init__(self, text):
        self.commands = set()
        self.flags = {"-h": False, "--help": False}
        section = None
        for line in text.split("\n"):
            if re.match(r"^[A-Z][\w ]*:\s*$", line):
                section = line.strip().rstrip(":")
                continue
            stripped = line.strip()
            if section == "Commands":
                m = re.match(r"^\s{2}([\w-]+)(\s|$)", line)
                if m:
                    self.commands.add(m.group(1))
            elif section == "Options" and stripped.startswith("-"):
                head = re.split(r"\s{2,}", stripped)[0]
                takes_value = "<" in head
                for flag in re.findall(r"(?<![\w<-])(--?[A-Za-z0-9][\w-]*)", head):
                    self.flags[flag] = takes_value


class Binaries:
    def __init__(self, paths, failures):
        self.paths = paths
        self.cache = {}
        self.failures = failures

    def help(self, binary, path):
        key = (binary, tuple(path))
        if key not in self.cache:
            exe = self.paths.get(binary)
            if not exe:
                self.cache[key] = None
            else:
                run = subprocess.run(
                    [exe, *path, "--help"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    env={k: v for k, v in os.environ.items() if not k.startswith("APP_")},
                    cwd=ROOT,
                )
                self.cache[key] = Help(run.stdout) if run.returncode == 0 else None
        return self.cache[key]

    def check(self, where, binary, args):
        if binary not in self.paths:
            return
        path = []
        help = self.help(binary, path)
        if help is None:
            self.failures.add(where, f"{binary} --help failed")
            return
        descending = True
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                break
            if re.match(r"^-{1,2}[A-Za-z]", a):
                flag, eq, _ = a.partition("=")
                if flag not in help.flags:
                    # A flag of a deeper subcommand given before it is
                    # checked at the end; here it is unknown.
                    self.failures.add(where, f"{' '.join([binary, *path])}: no option {flag} (in `{' '.join([binary, *path, '--help'])}`)")
                elif help.flags[flag] and not eq:
                    i += 1
            elif descending and help.commands:
                if a in help.commands and a != "help":
                    path.append(a)
                    sub = self.help(binary, path)
                    if sub is None:
                        self.failures.add(where, f"{binary} {' '.join(path)} --help failed")
                        return
                    help = sub
                elif is_placeholder(a):
                    descending = False
                else:
                    self.failures.add(where, f"{' '.join([binary, *path])}: no command {a!r} (its commands: {', '.join(sorted(help.commands - {'help'}))})")
                    return
            else:
                descending = False
            i += 1


# --- Cargo --------------------------------------------------------------------------


def workspace_packages():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"members\s*=\s*\[([^\]]*)\]", text)
    packages = {}
    for member in re.findall(r'"([^"]+)"', m.group(1) if m else ""):
        manifest = os.path.join(ROOT, member, "Cargo.toml")
        with open(manifest, encoding="utf-8") as f:
            body = f.read()
        name = re.search(r'^name\s*=\s*"([^"]+)"', body, re.M)
        targets = {"bench": set(), "test": set(), "bin": set()}
        for kind in targets:
            for block in re.findall(rf"^\[\[{kind}\]\]\s*\n((?:[^\[\n][^\n]*\n?)*)", body, re.M):
                t = re.search(r'^name\s*=\s*"([^"]+)"', block, re.M)
                if t:
                    targets[kind].add(t.group(1))
        for kind, folder in (("bench", "benches"), ("test", "tests")):
            d = os.path.join(ROOT, member, folder)
            if os.path.isdir(d):
                for entry in os.listdir(d):
                    if entry.endswith(".rs"):
                        targets[kind].add(entry[:-3])
                    elif os.path.isfile(os.path.join(d, entry, "main.rs")):
                        targets[kind].add(entry)
        targets["bin"].add(name.group(1) if name else member)
        targets["dir"] = os.path.join(ROOT, member)
        packages[name.group(1) if name else member] = targets
    return packages


def check_cargo(where, words, packages, binaries, failures):
    if len(words) < 2:
        return
    sub = words[1]
    args = words[2:]
    rest = []
    if "--" in args:
        k = args.index("--")
        args, rest = args[:k], args[k + 1 :]
    package = bin_name = None
    i = 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        flag, eq, inline = a.partition("=")
        if eq:
            value = inline
        if flag in ("-p", "--package") and value:
            package = value
            if value not in packages:
                failures.add(where, f"cargo {sub}: no package {value} in the workspace ({', '.join(sorted(packages))})")
        elif flag in ("--bench", "--test", "--bin") and value and not is_placeholder(value):
            kind = flag[2:]
            owners = [packages[package]] if package in packages else list(packages.values())
            if not any(value in p[kind] for p in owners):
                failures.add(where, f"cargo {sub}: no {kind} target {value!r}" + (f" in {package}" if package else ""))
            if kind == "bin":
                bin_name = value
        if flag in ("-p", "--package", "--bench", "--test", "--bin", "--features", "--profile", "-F", "-j", "--target-dir") and not eq:
            i += 1
        i += 1
    if sub == "run":
        binary = bin_name or package
        if binary in BINARIES:
            binaries.check(where, binary, rest)
    bench = next((args[k + 1] for k in range(len(args) - 1) if args[k] == "--bench"), None)
    filters = [a for a in rest if not a.startswith("-")]
    if sub == "bench" and bench and filters and package in packages:
        check_bench_filter(where, packages[package]["dir"], bench, filters[0], failures)


def check_bench_filter(where, crate_dir, bench, pattern, failures):
    """criterion runs the benchmarks whose id (`group/function/input`)
    matches the filter as a regex: one that matches none runs nothing."""
    source = os.path.join(crate_dir, "benches", f"{bench}.rs")
    if not os.path.isfile(source) or is_placeholder(pattern):
        return
    with open(source, encoding="utf-8") as f:
        names = set(re.findall(r'"([\w./ -]+)"', f.read()))
    ids = names | {f"{a}/{b}" for a in names for b in names}
    try:
        regex = re.compile(pattern)
    except re.error as e:
        failures.add(where, f"cargo bench --bench {bench}: filter `{pattern}` is not a regex ({e})")
        return
    if not any(regex.search(i) for i in ids):
        hint = " (criterion reads a regex: `a|b`, not `a\\|b`)" if "\\|" in pattern else ""
        failures.add(where, f"cargo bench --bench {bench}: filter `{pattern}` matches no benchmark of {os.path.relpath(source, ROOT)}{hint}")


# --- Putting it together -----------------------------------------------------------


def check_command(where, words, variables, ctx):
    """One simple command, its words cleaned."""
    if not words:
        return
    # `NAME=value` alone assigns: a binary's path kept for `$NAME`.
    assigns = []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        assigns.append(words.pop(0))
    if not words:
        for a in assigns:
            name, _, value = a.partition("=")
            if os.path.basename(value) in BINARIES:
                variables[name] = os.path.basename(value)
        return
    while words and words[0] in WRAPPERS:
        words = strip_assignments(words[1:])
    if not words:
        return
    first = words[0]
    m = re.match(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$", first)
    if m and m.group(1) in variables:
        first = variables[m.group(1)]
    if re.match(r"^(\./|\$ROOT/|\$\{ROOT\}/)?scripts/[\w.-]+$", first):
        check_script(where, [first] + words[1:], ctx["scripts"], ctx["failures"], ctx["origin"] == "inline")
        return
    base = os.path.basename(first)
    if base in BINARIES and not first.startswith("-"):
        ctx["binaries"].check(where, base, words[1:])
        return
    if first in WORKER_SHORTHAND and ctx["origin"] == "inline":
        ctx["binaries"].check(where, "issuer-worker", words)
        return
    if first == "cargo":
        check_cargo(where, words, ctx["packages"], ctx["binaries"], ctx["failures"])
        return
    if first == "docker" and len(words) > 2 and words[1] == "compose":
        check_compose_run(where, words[2:], ctx)
        return
    # A binary run by another command (`kubectl exec ... -- issuer-worker ...`).
    if "--" in words:
        after = words[words.index("--") + 1 :]
        if after and os.path.basename(after[0]) in BINARIES:
            ctx["binaries"].check(where, os.path.basename(after[0]), after[1:])


def compose_services():
    """docker/compose.yaml's services whose image is one of the binaries'."""
    path = os.path.join(ROOT, "docker", "compose.yaml")
    out = {}
    if not os.path.isfile(path):
        return out
    service = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^  ([\w-]+):\s*$", line)
            if m:
                service = m.group(1)
                continue
            t = re.search(r"target:\s*([\w-]+)", line)
            if service and t and t.group(1) in BINARIES:
                out[service] = t.group(1)
    return out


def check_compose_run(where, words, ctx):
    i = 0
    while i < len(words) and words[i] != "run":
        if words[i] in ("-f", "--file", "-p", "--project-name", "--profile", "--env-file"):
            i += 1
        i += 1
    i += 1
    while i < len(words) and words[i].startswith("-"):
        if words[i] in ("-e", "--env", "-v", "--volume", "-p", "--publish", "-w", "--workdir", "-u", "--user", "--name", "--entrypoint", "-l", "--label"):
            i += 1
        i += 1
    if i < len(words) and words[i] in ctx["compose"]:
        ctx["binaries"].check(where, ctx["compose"][words[i]], words[i + 1 :])


def check_settings(path, binary, failures):
    """The settings table of docs/DEPLOY.md against the binary's names."""
    run = subprocess.run([binary, "settings", "--names"], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items() if not k.startswith("APP_")})
    if run.returncode != 0:
        failures.add(rel(path), f"issuer-worker settings --names failed: {run.stderr.strip()}")
        return
    known = set(run.stdout.split())
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == "## Settings"), None)
    if start is None:
        failures.add(f"{rel(path)}:1", "no \"## Settings\" section")
        return
    named, prefixes = {}, {}
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`(APP_[A-Z0-9_]*\*?)`", first):
            if name.endswith("*"):
                prefixes[name[:-1]] = i + 1
            else:
                named.setdefault(name, i + 1)
    for name, line in sorted(named.items()):
        if name not in known and name != "APP_CONFIG_FILE":
            failures.add(f"{rel(path)}:{line}", f"{name} is not a setting (issuer-worker settings --names)")
    for name in sorted(known):
        if name not in named and not any(name.startswith(p) for p in prefixes):
            failures.add(f"{rel(path)}:{start + 1}", f"{name} is missing from the settings table")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--issuer-worker", help="the built issuer-worker binary")
    parser.add_argument("--ngrinder-equivalent", help="the built ngrinder-equivalent binary")
    parser.add_argument("--list", action="store_true", help="print every command checked")
    parser.add_argument("files", nargs="*", help="Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args()

    failures = Failures()
    paths = {}
    for binary, exe in (("issuer-worker", args.issuer_worker), ("ngrinder-equivalent", args.ngrinder_equivalent)):
        if exe:
            if not os.access(exe, os.X_OK):
                sys.exit(f"check_docs: {exe} is not an executable")
            paths[binary] = os.path.abspath(exe)
    ctx = {
        "failures": failures,
        "scripts": {},
        "binaries": Binaries(paths, failures),
        "packages": workspace_packages(),
        "compose": compose_services(),
    }
    checked = 0
    for path in doc_files(args.files):
        name = rel(path)
        for line, script in script_mentions(path):
            if not os.path.exists(os.path.join(ROOT, "scripts", script)):
                failures.add(f"{name}:{line}", f"scripts/{script}: no such script")
        variables = {}
        for line, text, origin in commands_of(path):
            ctx["origin"] = origin
            for words in simple_commands(text):
                for alt in alternatives(words):
                    checked += 1
                    if args.list:
                        print(f"{name}:{line}: {' '.join(alt)}")
                    check_command(f"{name}:{line}", list(alt), variables, ctx)
    deploy = os.path.join(ROOT, "docs", "DEPLOY.md")
    if "issuer-worker" in paths and any(os.path.abspath(f) == deploy for f in doc_files(args.files)):
        check_settings(deploy, paths["issuer-worker"], failures)

    def place(item):
        file, line, _ = item.split(":", 2)
        return (file, int(line))

    for item in sorted(dict.fromkeys(failures.items), key=place):
        print(item)
    unchecked = [b for b in BINARIES if b not in paths]
    note = f" (not checked: {', '.join(unchecked)} options, no binary given)" if unchecked else ""
    if failures.items:
        print(f"check_docs: {len(dict.fromkeys(failures.items))} failure(s) in {checked} commands{note}")
        return 1
    print(f"check_docs: {checked} commands of the documents checked{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
