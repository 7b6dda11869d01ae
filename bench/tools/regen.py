#!/usr/bin/env python3
"""Regenerates the measured parts of BENCHMARKS.md and keeps everything else as written.

    regen.py BENCHMARKS.md SECTIONS_DIR

Each generated part of the document sits between two markers, each alone on its line:

    <!-- bench:NAME:begin -->
    ... replaced by the contents of SECTIONS_DIR/NAME.md ...
    <!-- bench:NAME:end -->

Only the text between a pair is replaced, and only when SECTIONS_DIR/NAME.md exists (a
benchmark that was not run keeps its last figures); the markers themselves and all text
outside them — the hand-written "reading it" prose — are kept byte for byte. A begin
without its end (or the reverse, or a name twice) is an error and the file is left
untouched. Section files without a marker pair are listed on stderr.
"""
import os
import re
import sys

MARKER = re.compile(r"^<!-- bench:([A-Za-z0-9_-]+):(begin|end) -->$", re.M)


class MarkerError(ValueError):
    pass


def regenerate(text, sections):
    """The document with each marked part replaced by sections[NAME] where present;
    returns (new_text, replaced_names)."""
    out, replaced, position, open_name, seen = [], [], 0, None, set()
    for match in MARKER.finditer(text):
        name, kind = match.group(1), match.group(2)
        if kind == "begin":
            if open_name is not None:
                raise MarkerError(f"bench:{name}:begin inside bench:{open_name}")
            if name in seen:
                raise MarkerError(f"bench:{name} appears twice")
            seen.add(name)
            out.append(text[position:match.end()])
            position = match.end()
            open_name = name
        else:
            if open_name != name:
                raise MarkerError(f"bench:{name}:end without its begin")
            if name in sections:
                out.append("\n" + sections[name].strip("\n") + "\n")
                replaced.append(name)
            else:
                out.append(text[position:match.start()])
            out.append(match.group(0))
            position = match.end()
            open_name = None
    if open_name is not None:
        raise MarkerError(f"bench:{open_name}:begin without its end")
    out.append(text[position:])
    return "".join(out), replaced


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: regen.py BENCHMARKS.md SECTIONS_DIR")
    document, directory = sys.argv[1], sys.argv[2]
    sections = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".md"):
            with open(os.path.join(directory, entry), encoding="utf-8") as f:
                sections[entry[:-3]] = f.read()
    with open(document, encoding="utf-8") as f:
        text = f.read()
    try:
        new_text, replaced = regenerate(text, sections)
    except MarkerError as error:
        sys.exit(f"{document}: {error}; nothing changed")
    unused = sorted(set(sections) - set(replaced))
    temporary = document + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(new_text)
    os.replace(temporary, document)
    print(f"{document}: regenerated {', '.join(replaced) or 'nothing'}", file=sys.stderr)
    if unused:
        print(f"no markers for: {', '.join(unused)}", file=sys.stderr)


if __name__ == "__main__":
    main()
