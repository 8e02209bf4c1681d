"""The `s2sim ops` script language: one host page-table operation per line.

    map IPA SIZE PA PROT [as LEAFSIZE]   (as 4K: one leaf at a time, as faults would)
    unmap IPA SIZE
    wrprotect IPA SIZE
    relax IPA PROT
    mkold IPA SIZE
    mkyoung IPA
    flush IPA SIZE
    destroy

Numbers in hex or decimal, sizes like 4K/2M/1G, PROT from r, w, x (e.g. rw).
'#' starts a comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2sim.arch.descriptors import parse_prot
from s2sim.errors import ConfigError, S2SimError, parse_int, parse_size

SYNTAX = {
    "map": "map IPA SIZE PA PROT [as LEAFSIZE]",
    "unmap": "unmap IPA SIZE",
    "wrprotect": "wrprotect IPA SIZE",
    "relax": "relax IPA PROT",
    "mkold": "mkold IPA SIZE",
    "mkyoung": "mkyoung IPA",
    "flush": "flush IPA SIZE",
    "destroy": "destroy",
}


@dataclass(frozen=True)
class Op:
    name: str
    text: str
    line: int
    ipa: int = 0
    size: int = 0
    pa: int = 0
    prot: int = 0
    leaf: int = 0


def parse_line(text: str, line: int = 1) -> Op | None:
    """Parse one script line (None for blank/comment). Raises ConfigError naming the line."""
    body = text.split("#", 1)[0].strip()
    if not body:
        return None
    words = body.split()
    name = words[0].lower()
    if name not in SYNTAX:
        raise ConfigError(f"line {line}: operation {words[0]!r} is unknown; use one of "
                          f"{', '.join(SYNTAX)}")
    args = words[1:]
    try:
        if name == "map":
            leaf = 0
            if len(args) == 6 and args[4].lower() == "as":
                leaf = parse_size(args[5], "leaf size")
                args = args[:4]
            if len(args) != 4:
                raise ConfigError("wrong number of arguments")
            return Op(name, body, line, parse_int(args[0], "IPA"), parse_size(args[1]),
                      parse_int(args[2], "PA"), parse_prot(args[3]), leaf)
        if name == "relax":
            if len(args) != 2:
                raise ConfigError("wrong number of arguments")
            return Op(name, body, line, parse_int(args[0], "IPA"), prot=parse_prot(args[1]))
        if name == "mkyoung":
            if len(args) != 1:
                raise ConfigError("wrong number of arguments")
            return Op(name, body, line, parse_int(args[0], "IPA"))
        if name == "destroy":
            if args:
                raise ConfigError("wrong number of arguments")
            return Op(name, body, line)
        if len(args) != 2:
            raise ConfigError("wrong number of arguments")
        return Op(name, body, line, parse_int(args[0], "IPA"), parse_size(args[1]))
    except S2SimError as e:
        raise ConfigError(f"line {line}: {body!r}: {e}; syntax: {SYNTAX[name]}") from None


def parse_script(lines: list[str]) -> list[Op]:
    ops = []
    for i, text in enumerate(lines, 1):
        op = parse_line(text, i)
        if op is not None:
            ops.append(op)
    if not ops:
        raise ConfigError("the script has no operations; " + "; ".join(SYNTAX.values()))
    return ops
