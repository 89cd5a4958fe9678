# bash completion for portal(1): commands, their flags and values, for `portal remove` the
# names of the current overrides (asked from the daemon with `portal list --json`), and for
# `portal ask-again` the networks it does not ask about (`portal status --json`).
#
# Installed as /usr/local/share/bash-completion/completions/portal (scripts/install) or
# share/bash-completion/completions/portal (package.nix); bash-completion loads it on demand.
# Plain bash is enough: it uses COMP_WORDS/COMP_CWORD and compgen only.

# The names of the overrides the daemon holds, one per line; nothing when it cannot be reached.
# $1: the bus named on the command line, if any.
_portal_overrides() {
    portal list --json ${1:+--bus "$1"} 2>/dev/null | grep -o '"name": *"[^"]*"' | cut -d'"' -f4
}

# The networks the daemon does not ask about, one per line. $1: the bus, if any.
_portal_quiet() {
    portal status --json ${1:+--bus "$1"} 2>/dev/null | tr -d '\n' |
        grep -o '"quiet_networks": *\[[^]]*\]' | grep -o '"[^"]*"' | tail -n +2 | cut -d'"' -f2
}

_portal() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=''
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    local commands="add remove list status check dont-ask ask-again open import daemon agent wire"
    local command='' i word positional=0 bus=''
    # The first word that is not an option is the command; count positionals after it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
        --bus)
            ((i++))
            bus=${COMP_WORDS[i]}
            ;;
        --bus=*) bus=${word#--bus=} ;;
        --ttl | --listen | --upstream | --state-dir | --config | --log-level | \
            --network-source | --wiring | --resolv-conf | --ca-file | --browser | --request)
            ((i++)) # the option's value
            ;;
        -*) ;;
        *)
            if [ -z "$command" ]; then
                command=$word
            else
                ((positional++))
            fi
            ;;
        esac
    done

    COMPREPLY=()
    # Values of options that take one.
    case $prev in
    --bus)
        mapfile -t COMPREPLY < <(compgen -W "system session" -- "$cur")
        return
        ;;
    --ttl)
        mapfile -t COMPREPLY < <(compgen -W "90s 30m 1h 12h 1d 1w never" -- "$cur")
        return
        ;;
    --log-level)
        mapfile -t COMPREPLY < <(compgen -W "debug info" -- "$cur")
        return
        ;;
    --network-source)
        mapfile -t COMPREPLY < <(compgen -W "auto nm netlink none" -- "$cur")
        return
        ;;
    --wiring)
        mapfile -t COMPREPLY < <(compgen -W "auto resolvconf resolved none" -- "$cur")
        return
        ;;
    --sign-in-notification)
        mapfile -t COMPREPLY < <(compgen -W "auto always never" -- "$cur")
        return
        ;;
    --config | --resolv-conf | --ca-file)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        return
        ;;
    --state-dir)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        return
        ;;
    --listen | --upstream | --browser)
        return # an address or a command: nothing to offer
        ;;
    esac

    if [ -z "$command" ]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "-h --help --version" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
        fi
        return
    fi

    local flags="-h --help --bus"
    case $command in
    add) flags+=" --ttl --until-removed --any-network" ;;
    list) flags+=" --json" ;;
    status) flags+=" --json --watch" ;;
    open) flags+=" --print --proxy --url --max-time --browser --config --log-level" ;;
    import) flags+=" --ttl --any-network" ;;
    daemon) flags+=" --listen --upstream --state-dir --config --log-level --network-source --wiring --resolv-conf --ca-file" ;;
    agent) flags+=" --browser --sign-in-notification --config --log-level" ;;
    wire) flags="-h --help --resolv-conf --request --stopped" ;;
    ask-again) flags+=" --all" ;;
    remove | check | dont-ask) ;;
    *) return ;;
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$flags" -- "$cur")
        return
    fi
    case $command in
    remove)
        if [ "$positional" = 0 ]; then
            mapfile -t COMPREPLY < <(compgen -W "$(_portal_overrides "$bus")" -- "$cur")
        fi
        ;;
    ask-again)
        if [ "$positional" = 0 ]; then
            local IFS=$'\n'
            mapfile -t COMPREPLY < <(compgen -W "$(_portal_quiet "$bus")" -- "$cur")
        fi
        ;;
    import)
        if [ "$positional" = 0 ]; then
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        ;;
    esac
}

complete -F _portal portal
