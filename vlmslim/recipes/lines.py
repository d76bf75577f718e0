"""YAML with line numbers: a recipe's errors name the file, the line and the key path.

`load_yaml(text, filename)` returns plain Python data plus `Lines`, a map from key paths such as
`("variants", 3, "steps", 0)` to 1-based line numbers, built from `yaml.compose`'s node marks. `--set`
overrides (`apply_override`) change the data and record their origin instead of a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from vlmslim.errors import RecipeError

Path_ = tuple  # ("variants", 3, "steps", 0): mapping keys and sequence indices


def format_path(path: Path_) -> str:
    """("variants", 3, "steps", 0) -> "variants[3].steps[0]"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Lines:
    filename: str
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: dict[Path_, str] = field(default_factory=dict)  # path -> the `--set` text that set it

    def where(self, path: Path_) -> str:
        """'recipe.yaml:12' for the nearest recorded ancestor of `path`; '--set k=v' for an override."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.overridden:
                return f"{self.filename} (--set {self.overridden[path[:n]]})"
            if path[:n] in self.lines:
                return f"{self.filename}:{self.lines[path[:n]]}"
        return self.filename

    def error(self, path: Path_, message: str, at: Path_ | None = None) -> RecipeError:
        """'recipe.yaml:12: variants[3].steps[0]: message' (the path is left out at the top level); the
        line is that of `at` (e.g. the offending key inside `path`) when given."""
        shown = format_path(path)
        return RecipeError(f"{self.where(path if at is None else at)}: {shown + ': ' if shown else ''}{message}")


def load_yaml(text: str, filename: str):
    """(data, Lines) of one YAML document; RecipeError with the line for invalid YAML or a repeated key."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{filename}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    lines = Lines(filename)
    if root is None:
        return None, lines
    constructor = yaml.SafeLoader("")  # builds scalars (ints, floats, bools, null) by their resolved tags

    def walk(node, path: Path_):
        lines.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise lines.error(path, f"line {key_node.start_mark.line + 1}: a key must be a plain name")
                if key in out:
                    raise RecipeError(f"{filename}:{key_node.start_mark.line + 1}: {format_path(path + (key,))}: "
                                      f"key given twice")
                lines.lines[path + (key,)] = key_node.start_mark.line + 1  # errors point at the key's line
                out[key] = walk(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node)

    return walk(root, ()), lines


def apply_override(data: dict, lines: Lines, assignment: str) -> None:
    """`--set bench.batch_size=8`: set a (nested) mapping key; the value is parsed as YAML (8 -> int,
    null -> None, [a, b] -> a list). Missing intermediate mappings are created."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set bench.batch_size=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {assignment!r}: the value is not valid YAML ({e})") from e
    parts = tuple(key.strip().split("."))
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or not isinstance(child, dict):
            if child is not None:
                raise RecipeError(f"--set {assignment!r}: {format_path(parts[:i + 1])} is not a mapping")
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    lines.overridden[parts] = assignment
