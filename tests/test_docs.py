"""The docs match the code: every Hydra override that README.md and docs/*.md show composes, and every published
table, repository path and `lnrepro.*` name they show exists, so a renamed key, option, file or module fails here
(naming the doc file and line) rather than in a user's terminal. Composing only: no training, a few seconds.

The overrides: each command the docs show, in a fenced code block or an inline code span, of `train.py`, `eval.py`,
`profile_net.py`, `lnrepro-train`, `lnrepro-eval`, `lnrepro-profile` or `make train|eval|reproduce-seeds ARGS="..."`
is composed with `hydra.compose` against the package's configs (train.yaml, eval.yaml or profile.yaml, as the
command implies, the way tests/conftest.py's `compose_config` does), and every node but `hydra` is then resolved, as
the tasks resolve them: a key or option that does not exist, or an interpolation that points nowhere, fails.

Rules, all here and small:
- A sweep (`-m`) composes once per option of each swept config group (`model=vgg16,resnet34`), the other swept keys
  at their first value; a swept value (`model.width=0.5,1.0`) composes at its first. A comma list without `-m` is a
  doc error (Hydra refuses it).
- Placeholders: `<anything>` and `...` as a value become the string `placeholder` (`data.root=<folder>`,
  `ckpt_path=...`); a config group given as a placeholder (`model=<name>`) keeps its default option.
- A command's arguments end at the first word that is neither an override, a Hydra flag nor one of SKIPPED_WORDS
  (placeholders standing for several overrides): the rest of the line is prose (`-> lnrepro.load_run(...)`).
- An inline span of bare overrides (`scheduler.warmup_epochs=5`, no command) composes on its own with train.yaml,
  which has every group: a span must work as shown. The exceptions are three short lists, each entry checked to be
  still in its doc: spans not composed (BARE_SPANS_NOT_COMPOSED, with why), spans shown as refused, which must keep
  failing (BARE_SPANS_THAT_FAIL), and spans composed with the command of their paragraph (BARE_SPAN_CONTEXT).
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# the console script or checkout wrapper -> the entry config it composes
SCRIPTS = {
    "lnrepro-train": "train",
    "train.py": "train",
    "lnrepro-eval": "eval",
    "eval.py": "eval",
    "lnrepro-profile": "profile",
    "profile_net.py": "profile",
}
# make targets that run a Hydra command with $(ARGS) (Makefile): entry config, the overrides the target adds
MAKE_TARGETS = {
    "train": ("train", []),
    "eval": ("eval", []),
    "reproduce-seeds": ("train", ["-m", "experiment=cifar10_seeds"]),
}
# Hydra's own flags; those that take a value
HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn"}
# Words that stand for several overrides at once and carry none themselves: skipped, the command goes on.
SKIPPED_WORDS = {"[overrides]", "PLACEHOLDER"}
# Bare inline spans (no command) that are not composed alone, with why. Keep this short.
BARE_SPANS_NOT_COMPOSED = {
    ("RESULTS.md", "profile.onnx=true"): "history: the key profile.runtimes replaced, named as such",
    ("RESULTS.md", "profile.guideline.scale=1/2/4"): "shorthand for three values in one sentence",
    ("DESIGN.md", "model=mine"): "the sentence's own hydra.searchpath makes it an option",
    ("MODELS.md", "model.<option>=..."): "a pattern, not an override",
}
# Bare spans shown as refused on purpose (README's troubleshooting): they must keep failing.
BARE_SPANS_THAT_FAIL = {("README.md", "model=resnet999"), ("README.md", "optimizer=lamb")}
# Bare spans that belong to a command named in the same paragraph: (entry config, that command's overrides)
BARE_SPAN_CONTEXT = {
    ("RESULTS.md", "profile.guidelines=[g1,g2] profile.guideline.size=28"): (
        "profile",
        ["experiment=shufflenetv2_guidelines"],
    ),
}
PLACEHOLDER = "PLACEHOLDER"


@dataclass
class Command:
    doc: str  # file name
    line: int
    text: str  # as shown, for the failure message
    config: str  # train | eval | profile
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    bare: bool = False  # an inline span of overrides without a command

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _placeholders_out(text: str) -> str:
    """`<run dir>`, `<cifar10 copy>` -> PLACEHOLDER, so that a placeholder with spaces stays one word."""
    return re.sub(r"<[^<>`\n]*>", PLACEHOLDER, text)


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(_placeholders_out(text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: output, or a Python snippet, not a command
        return _placeholders_out(text).split()


def _is_override(word: str) -> bool:
    return bool(re.fullmatch(r"[+~]{0,2}[A-Za-z_][\w./@-]*(=.*)?", word)) and ("=" in word or word.startswith("~"))


def _top_level_keys() -> set[str]:
    keys: set[str] = set()
    for entry in ("train", "eval", "profile"):
        keys |= {k for k in OmegaConf.load(CONF / f"{entry}.yaml") if k != "defaults"}
    return keys


TOP_LEVEL_KEYS = _top_level_keys()


def _is_bare_override(word: str) -> bool:
    """An override standing in prose: its key is dotted (`data.root`), a config group (`logger`) or a top-level key
    of an entry config (`seed`). `stem=cifar` (a build_model argument) and `WANDB_MODE=offline` (an environment
    variable) are not."""
    if not _is_override(word):
        return False
    key = word.lstrip("+~").partition("=")[0]
    return "." in key or "/" in key or (CONF / key).is_dir() or key in TOP_LEVEL_KEYS


def _commands_in(words: list[str]) -> list[tuple[str, list[str]]]:
    """(entry config, argument words) for every command in one logical line."""
    found = []
    for i, word in enumerate(words):
        name = word.rsplit("/", 1)[-1]
        if name in SCRIPTS:
            found.append((SCRIPTS[name], _arguments(words[i + 1 :])))
        elif word == "make" and i + 1 < len(words) and words[i + 1] in MAKE_TARGETS:
            config, added = MAKE_TARGETS[words[i + 1]]
            args = next((w[len("ARGS=") :] for w in words[i + 2 :] if w.startswith("ARGS=")), "")
            found.append((config, added + _arguments(_words(args))))
    return found


def _arguments(words: list[str]) -> list[str]:
    args: list[str] = []
    take_value = False
    for word in words:
        if take_value:
            take_value = False
            args.append(word)
        elif word in HYDRA_FLAGS:
            args.append(word)
        elif word in HYDRA_FLAGS_WITH_VALUE:
            args.append(word)
            take_value = True
        elif word in SKIPPED_WORDS:
            continue
        elif _is_override(word):
            args.append(word)
        else:  # a shell separator, an arrow, prose: the command ended
            break
    return args


def _command(doc: str, line: int, text: str, config: str, args: list[str], bare: bool = False) -> Command:
    command = Command(doc, line, " ".join(text.split()), config, bare=bare)
    take_value = False
    for word in args:
        if take_value:
            take_value = False
        elif word in ("-m", "--multirun"):
            command.multirun = True
        elif word in HYDRA_FLAGS_WITH_VALUE:
            take_value = True
        elif word.startswith("-"):
            continue
        else:
            command.overrides.append(word)
    return command


def _code(doc: Path) -> tuple[list[tuple[int, str]], str]:
    """The logical lines of fenced code blocks (backslash continuations joined) with their first line number, and
    the text outside code blocks (code lines blanked, so offsets still give line numbers)."""
    blocks: list[tuple[int, str]] = []
    prose: list[str] = []
    in_block = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            prose.append("")
            continue
        if not in_block:
            prose.append(line)
            continue
        prose.append("")
        start, text = pending if pending else (number, "")
        text += " " + line.rstrip()
        if text.endswith("\\"):
            pending = (start, text[:-1])
        else:
            pending = None
            blocks.append((start, text.strip().removeprefix("$ ")))
    return blocks, "\n".join(prose)


def doc_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        blocks, prose = _code(doc)
        candidates = list(blocks)
        for span in re.finditer(r"`([^`]+)`", prose):
            if "\n\n" not in span.group(1):
                candidates.append((prose.count("\n", 0, span.start()) + 1, span.group(1)))
        for line, text in candidates:
            words = _words(text)
            found = _commands_in(words)
            for config, args in found:
                if any(not a.startswith("-") for a in args):
                    commands.append(_command(doc.name, line, text, config, args))
            if not found and words and all(_is_bare_override(w) for w in words):
                if (doc.name, text) in BARE_SPANS_NOT_COMPOSED:
                    continue
                config, context = BARE_SPAN_CONTEXT.get((doc.name, text), ("train", []))
                commands.append(_command(doc.name, line, text, config, context + words, bare=True))
    return sorted(commands, key=lambda c: (c.doc, c.line))


COMMANDS = doc_commands()


def _with_placeholders(override: str) -> str | None:
    key, sep, value = override.partition("=")
    if not sep or (value != "..." and PLACEHOLDER not in value):
        return override
    if "." not in key and (CONF / key.lstrip("+~")).is_dir():
        return None  # `model=<name>`: the group keeps its default option
    return f"{key}=placeholder"


def jobs(command: Command) -> list[list[str]]:
    """The override lists to compose: one; for a sweep, one more per further option of each swept config group
    (`model=vgg16,resnet34`). A swept value (`model.width=0.5,1.0`) composes at its first: the key is what can
    drift."""
    overrides = [o for o in (_with_placeholders(o) for o in command.overrides) if o is not None]
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [i for i, o in enumerate(parsed) if o.is_sweep_override()]
    if swept and not command.multirun:
        raise ValueError("a comma list without -m (Hydra refuses it)")
    values = {i: list(parsed[i].sweep_string_iterator()) for i in swept}
    first = [f"{parsed[i].get_key_element()}={values[i][0]}" if i in values else o for i, o in enumerate(overrides)]
    result = [first]
    for i in swept:
        if (CONF / parsed[i].key_or_group).is_dir():
            for value in values[i][1:]:
                result.append([*first[:i], f"{parsed[i].get_key_element()}={value}", *first[i + 1 :]])
    return result


def compose_and_resolve(config: str, overrides: list[str], tmp_path: Path) -> None:
    """Compose as the command would, then resolve every node the task reads (all but `hydra`)."""
    cfg = compose_config(config, tmp_path, overrides)
    for key in cfg:
        if key != "hydra":
            node = cfg[key]  # a plain value resolves when read
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)


@pytest.fixture(autouse=True)
def _as_a_user(tmp_path, monkeypatch):
    """In a project folder holding the README's own config folder (`myconf/model/mine.yaml`, for
    `hydra.searchpath=[file://myconf]`), with the variables the launchers set unset, as on a user's machine (a bare
    `trainer=ddp` reads them)."""
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mine.yaml").write_text("defaults: [shufflenet_v2, _self_]\nwidth: 0.25\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LNREPRO_TASKS_PER_NODE", raising=False)
    monkeypatch.delenv("LNREPRO_NUM_NODES", raising=False)
    yield
    GlobalHydra.instance().clear()


_OUTCOMES: dict[tuple[str, tuple[str, ...]], str | None] = {}  # docs repeat themselves: compose each job once


def _failure(command: Command, tmp_path: Path) -> str | None:
    """None when every job of the command composes and resolves, else what failed first."""
    try:
        command_jobs = jobs(command)
    except ValueError as error:
        return str(error)
    for overrides in command_jobs:
        key = (command.config, tuple(overrides))
        if key not in _OUTCOMES:
            try:
                compose_and_resolve(command.config, overrides, tmp_path / "run")
                _OUTCOMES[key] = None
            except Exception as error:  # any failure to compose or resolve is the finding
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                _OUTCOMES[key] = f"overrides {overrides}: {type(error).__name__}: {first_line}"
        if _OUTCOMES[key]:
            return _OUTCOMES[key]
    return None


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where}:{'bare' if c.bare else c.config}")
def test_every_override_the_docs_show_composes(command: Command, tmp_path):
    failure = _failure(command, tmp_path)
    if (command.doc, command.text) in BARE_SPANS_THAT_FAIL:
        assert failure, f"{command.where}: `{command.text}` is shown as refused, but it composes"
    elif failure:
        pytest.fail(
            f"{command.where}: `{command.text}` does not compose with {command.config}.yaml: {failure}", pytrace=False
        )


def test_the_docs_show_commands_and_the_exceptions_stay_few_and_exact():
    per_doc = {doc.name: sum(len(c.overrides) for c in COMMANDS if c.doc == doc.name) for doc in DOCS}
    # the extractor finds what each doc shows (a broken extractor would pass every doc silently)
    assert per_doc["README.md"] >= 50 and per_doc["RESULTS.md"] >= 30 and per_doc["SCALE_OUT.md"] >= 20, per_doc
    assert sum(1 for c in COMMANDS if c.multirun) >= 15
    exceptions = [*BARE_SPANS_NOT_COMPOSED, *BARE_SPANS_THAT_FAIL, *BARE_SPAN_CONTEXT]
    assert len(exceptions) <= 8
    for doc, text in exceptions:
        assert f"`{text}`" in (ROOT / ("" if doc == "README.md" else "docs") / doc).read_text(), (doc, text)
    shown = {(c.doc, c.text) for c in COMMANDS}
    assert BARE_SPANS_THAT_FAIL <= shown and set(BARE_SPAN_CONTEXT) <= shown


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("train", ["scheduler=step", "scheduler.warmup_epochs=5"]),  # a key the chosen option does not have
        ("train", ["model.widht=0.5"]),  # a misspelt key
        ("train", ["model=shufflenet_v3"]),  # an option that does not exist
        ("train", ["model.num_classes=${data.classes}"]),  # an interpolation that points nowhere
        ("profile", ["profile.end_of_fit=false", "optimizer.lr=0.1"]),  # a group the entry config lacks
        ("eval", ["model=ghostnet"]),
    ],
)
def test_the_check_catches_drift(config, overrides, tmp_path):
    assert _failure(Command("example.md", 1, " ".join(overrides), config, overrides), tmp_path) is not None


def test_placeholders_and_sweeps_become_composable_jobs():
    text = "lnrepro-train -m model=ghostnet,vgg16 model.width=0.5,1.0 data.root=<a folder> ckpt_path=... logger=<name>"
    ((config, args),) = _commands_in(_words(text + "   # a comment"))
    command = _command("example.md", 1, text, config, args)
    assert command.multirun and config == "train"
    assert jobs(command) == [
        ["model=ghostnet", "model.width=0.5", "data.root=placeholder", "ckpt_path=placeholder"],
        ["model=vgg16", "model.width=0.5", "data.root=placeholder", "ckpt_path=placeholder"],
    ]
    ((config, args),) = _commands_in(_words('make reproduce-seeds ARGS="data.root=<folder holding it>"'))
    assert (config, args) == ("train", ["-m", "experiment=cifar10_seeds", "data.root=PLACEHOLDER"])
    # a diagram's arrow or a parenthesis ends the command; `[overrides]` stands for several and is skipped
    ((config, args), _) = _commands_in(_words("lnrepro-train model=ghostnet [overrides] (python train.py here)"))
    assert args == ["model=ghostnet"]


def _code_texts(doc: Path) -> list[tuple[int, str]]:
    blocks, prose = _code(doc)
    spans = [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(r"`([^`]+)`", prose)]
    return blocks + [(line, text) for line, text in spans if "\n\n" not in text]


def test_every_published_table_the_docs_name_ships():
    from lnrepro.reporting.reference import SHIPPED_TABLES

    named = [
        (doc.name, line, name)
        for doc in DOCS
        for line, text in _code_texts(doc)
        for names in re.findall(r"--reference\s+([\w|]+)", text)
        for name in names.split("|")
        if name not in ("NAME", "CSV")
    ]
    assert len(named) >= 5
    wrong = [f"{doc}:{line}: --reference {name}" for doc, line, name in named if name not in SHIPPED_TABLES]
    assert not wrong, f"not a shipped table name (lnrepro-report --help lists them): {wrong}"


def test_every_repository_path_the_docs_name_exists():
    """`conf/model/<name>.yaml`, `lnrepro/reference/*.csv`: a path in a code span names something in the checkout."""
    top = r"(conf|lnrepro|tests|benchmarks|scripts|docs|hydra_plugins|\.ci)/"
    paths = [
        (doc.name, line, text)
        for doc in DOCS
        for line, text in _code_texts(doc)
        if re.fullmatch(top + r"[\w./*<>-]*", text)
    ]
    assert len(paths) >= 20
    missing = [f"{doc}:{line}: {p}" for doc, line, p in paths if not list(ROOT.glob(re.sub(r"<[^>]*>", "*", p)))]
    assert not missing, f"no such path in the checkout: {missing}"


def _importable(name: str) -> bool:
    """`lnrepro.schema.RUNTIMES`: the longest prefix that imports, then attributes."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            found = importlib.import_module(module)
            break
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but an import inside it fails: that is the finding
                raise
            continue
    else:
        return False
    for attr in parts[split:]:
        found = getattr(found, attr, None)
    return found is not None


def test_every_lnrepro_name_the_docs_show_exists():
    """A dotted name in a code span (`lnrepro.resolvers.process_tag`) imports."""
    names = sorted(
        {
            (doc.name, line, name)
            for doc in DOCS
            for line, text in _code_texts(doc)
            for name in re.findall(r"\blnrepro(?:\.\w+)+", text)
        }
    )
    assert len(names) >= 10
    assert _importable("lnrepro.schema.RUNTIMES") and not _importable("lnrepro.conf.process_tag")
    missing = [f"{doc}:{line}: {name}" for doc, line, name in names if not _importable(name)]
    assert not missing, f"no such module or name: {missing}"
