"""``rbp completion``: a bash or zsh completion script, generated from the ``rbp`` parser itself.

A static script rather than argcomplete: argcomplete is one more dependency and starts Python (importing
rbp) on every TAB; a script printed from the parser answers at once and knows every command, option and
choice of the ``rbp`` that printed it.
"""

from __future__ import annotations

import argparse
import functools
import shlex

from rbp.cli.options import add_command

# $2 and $3 (the word being completed, the one before it) and a count over COMP_WORDS, not indices into
# it: zsh's bash layer (bashcompinit) passes the same arguments but indexes its arrays from 1.
_BASH = """\
# rbp completion for bash, printed by `rbp completion bash`; enable it with: eval "$(rbp completion bash)"
_rbp() {
    local cur=$2 prev=$3 command="" word words="" i=0
    for word in "${COMP_WORDS[@]}"; do
        # The command: the first word after `rbp` that is no option (rbp's own options take no value).
        if (( i > 0 && i < COMP_CWORD )) && [[ $word != -* ]]; then
            command=$word
            break
        fi
        i=$((i + 1))
    done
    case "$command $prev" in
@CHOICES@
        *)
            # A positional argument or an option's value: file names (complete -o default).
            [[ -n $command && $cur != -* ]] && return 0
            case $command in
@OPTIONS@
            esac ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _rbp rbp
"""

_ZSH = """\
# rbp completion for zsh, printed by `rbp completion zsh`; enable it with: eval "$(rbp completion zsh)"
# zsh runs the bash completion through its bash layer, bashcompinit (after compinit).
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit }
autoload -U +X bashcompinit && bashcompinit
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion of ``parser``: its commands, each command's options, and the options' choices.

    After an option with choices (``--attack``), or a command's positional with choices, TAB offers them;
    after ``-``, the command's options; elsewhere, file names.
    """
    commands = _subcommands(parser)
    choices, options = [], [_case("", _option_strings(parser) + list(commands), "                ")]
    for name, command in commands.items():
        options.append(_case(name, _option_strings(command), "                "))
        for action in (a for a in command._actions if a.choices):
            # After one of its option strings; a positional's, after the command's name (its first positional).
            for after in action.option_strings or [name]:
                choices.append(_case(f"{name} {after}", [str(c) for c in action.choices], "        "))
    return _BASH.replace("@CHOICES@", "\n".join(choices)).replace("@OPTIONS@", "\n".join(options))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell`` (bash or zsh)."""
    return bash_script(parser) if shell == "bash" else _ZSH + bash_script(parser)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def _case(pattern: str, words: list[str], indent: str) -> str:
    return f"{indent}{shlex.quote(pattern)}) words={shlex.quote(' '.join(words))} ;;"


def _completion(root: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    print(script(root, args.shell), end="")
    return 0


def add_commands(commands: argparse._SubParsersAction, root: argparse.ArgumentParser) -> None:
    """Add ``rbp completion``; its script is read from ``root``, the whole ``rbp`` parser, when it runs."""
    completion = add_command(
        commands,
        "completion",
        "print a shell completion script for rbp (commands, options, choices)",
        [
            'eval "$(rbp completion bash)"   # in ~/.bashrc',
            'eval "$(rbp completion zsh)"    # in ~/.zshrc',
            "rbp completion bash > ~/.local/share/bash-completion/completions/rbp",
        ],
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    completion.set_defaults(handler=functools.partial(_completion, root))
