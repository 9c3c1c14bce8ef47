#!/usr/bin/env bash
# Helpers sourced by the launch scripts: print-then-run with a dry-run mode, messages, flag parsing.
# Callers set DRY_RUN=1 to print commands without running them.

# Prints one argument the way a shell would need it: bare when safe, else single-quoted.
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command as `+ word word ...` on one line (copy-pasteable).
show() {
  local line="+" word
  for word in "$@"; do line+=" $(shell_word "$word")"; done
  printf '%s\n' "$line"
}

# Prints the command, then runs it unless DRY_RUN=1.
run() {
  show "$@"
  [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}

note() { printf '# %s\n' "$*"; }

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

# flag_value FLAG VALUE...: prints VALUE, or fails when the flag has no value.
flag_value() {
  [[ $# -ge 2 && "$2" != --* ]] || die "$1 needs a value"
  printf '%s' "$2"
}
