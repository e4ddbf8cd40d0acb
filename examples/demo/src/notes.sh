#!/bin/sh
# notes: a tiny command-line notebook.
#
#   notes add TEXT...     store a note
#   notes list            show all notes, oldest first
#   notes search WORD     show the notes containing WORD
#   notes delete ID       remove one note
#
# Notes live in one plain text file, "$NOTES_FILE" (default: ~/.notes), one note per line as
# "<id><TAB><ISO-8601 time><TAB><text>". Phase 1 (phases/phase_1/) implements the commands; this stub
# only knows its own usage.

set -eu

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    -h | --help | help | "")
        usage
        ;;
    *)
        echo "notes: '$1' is not implemented yet (see phases/phase_1/)" >&2
        exit 2
        ;;
esac
