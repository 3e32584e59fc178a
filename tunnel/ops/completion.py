"""`fluidity completion bash|zsh|fish`: the scripts, built from the parser itself so that
they always match the CLI."""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    subcommands: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subcommands.update(action.choices)
            options += list(action.choices)
        elif action.choices and not action.option_strings:
            options += list(action.choices)  # positional choices (completion's shell)
    # `fluidity agent` / `server` hand their flags to twistd: the parser carries them for completion.
    options += getattr(parser, "completion_words", [])
    subcommands.update(getattr(parser, "completion_subcommands", {}))
    return sorted(set(options) | set(subcommands)), subcommands


def _completion_paths(parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    """Every command path (`""`, `"certs"`, `"certs init"`, ...) and the words that may follow it."""
    paths = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        words, subs = _words(p)
        paths.append((path, words))
        for name, sub in subs.items():
            walk(sub, f"{path} {name}".strip())

    walk(parser, "")
    return paths


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """Completion from the parser itself (commands, sub-commands, flags, and the agent's and
    server's twistd flags), so it always matches the CLI: bash; zsh runs the bash script
    through bashcompinit; fish gets its own, built from the same paths."""
    paths = _completion_paths(parser)
    if shell == "fish":
        return _fish_script(paths)
    cases = [f'    "{path}") words="{" ".join(words)}" ;;' for path, words in paths]
    body = "\n".join(cases)
    known = "\n".join(f'    "{path}") echo 1 ;;' for path, _ in paths)
    bash = f"""_fluidity() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" i words
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in
      -*) ;;
      *) case " $(_fluidity_path "${{path:+$path }}${{COMP_WORDS[i]}}") " in
           " 1 ") path="${{path:+$path }}${{COMP_WORDS[i]}}" ;;
         esac ;;
    esac
  done
  case "$path" in
{body}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_fluidity_path() {{
  case "$1" in
{known}
    *) echo 0 ;;
  esac
}}
complete -F _fluidity fluidity"""
    if shell == "zsh":
        return (
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }\nautoload -U +X bashcompinit && "
            "bashcompinit\n" + bash
        )
    return bash


def _fish_script(paths: list[tuple[str, list[str]]]) -> str:
    """fish: one function finds the command path typed so far and prints what may follow."""
    known = " ".join(f"'{path}'" for path, _ in paths if path)
    cases = "\n".join(
        f"        case '{path}'\n            printf '%s\\n' {' '.join(words)}" for path, words in paths if words
    )
    return f"""function __fluidity_words
    set -l known {known}
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l path ''
    for token in $tokens
        if string match -q -- '-*' $token
            continue
        end
        set -l candidate (string trim -- "$path $token")
        if contains -- $candidate $known
            set path $candidate
        end
    end
    switch $path
{cases}
    end
end
complete -c fluidity -f -a '(__fluidity_words)'"""
