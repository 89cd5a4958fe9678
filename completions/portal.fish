# fish completion for portal(1): commands, their flags and values, for `portal remove` the
# names of the current overrides (asked from the daemon with `portal list --json`), and for
# `portal ask-again` the networks it does not ask about (`portal status --json`).
#
# Installed as /usr/local/share/fish/vendor_completions.d/portal.fish (scripts/install) or
# share/fish/vendor_completions.d/portal.fish (package.nix).

set -l commands add remove list status check dont-ask ask-again open import daemon agent wire

# The names of the overrides the daemon holds; nothing when it cannot be reached.
function __portal_overrides
    set -l bus
    set -l words (commandline -opc)
    if set -l at (contains -i -- --bus $words); and test (count $words) -gt $at
        set bus --bus $words[(math $at + 1)]
    end
    portal list --json $bus 2>/dev/null | string match -r -g '"name": *"([^"]*)"'
end

# The networks the daemon does not ask about; nothing when it cannot be reached.
function __portal_quiet
    set -l bus
    set -l words (commandline -opc)
    if set -l at (contains -i -- --bus $words); and test (count $words) -gt $at
        set bus --bus $words[(math $at + 1)]
    end
    portal status --json $bus 2>/dev/null | string join ' ' | string match -r -g '"quiet_networks": \[([^\]]*)\]' | string match -r -a -g '"([^"]*)"'
end

complete -c portal -f
complete -c portal -n "not __fish_seen_subcommand_from $commands" -s h -l help -d 'show help and exit'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -l version -d 'show the version and exit'

complete -c portal -n "not __fish_seen_subcommand_from $commands" -a add -d 'answer DOMAIN with IP (or its venue address)'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a remove -d 'remove the override for DOMAIN'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a list -d 'list overrides'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a status -d 'network, portal state, DNS, overrides'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a check -d 'probe the current network now'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a dont-ask -d "don't ask to sign in on the current network again"
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a ask-again -d 'ask to sign in on NETWORK again (undo dont-ask)'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a open -d 'open the sign-in page in a browser'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a import -d 'add overrides from hosts-file lines'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a daemon -d 'run the daemon (system service)'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a agent -d 'run the per-user desktop agent'
complete -c portal -n "not __fish_seen_subcommand_from $commands" -a wire -d 'put the stub into resolv.conf or take it out, as the daemon asks (root)'

# Every command: help and the bus (but `wire`, which edits a file and talks to no bus).
complete -c portal -n "__fish_seen_subcommand_from $commands" -s h -l help -d 'show help and exit'
complete -c portal -n "__fish_seen_subcommand_from $commands; and not __fish_seen_subcommand_from wire" -l bus -x -a 'system session' -d 'D-Bus to use (default: system, or $PORTAL_BUS)'

complete -c portal -n '__fish_seen_subcommand_from add import' -l ttl -x -a '90s 30m 1h 12h 1d 1w never' -d 'lifetime (default: 12h)'
complete -c portal -n '__fish_seen_subcommand_from add import' -l any-network -d 'answer on every network, not only the current one'
complete -c portal -n '__fish_seen_subcommand_from add' -l until-removed -d 'never expire'

complete -c portal -n '__fish_seen_subcommand_from remove' -a '(__portal_overrides)' -d override
complete -c portal -n '__fish_seen_subcommand_from ask-again' -a '(__portal_quiet)' -d network
complete -c portal -n '__fish_seen_subcommand_from ask-again' -l all -d 'every network'

complete -c portal -n '__fish_seen_subcommand_from list status' -l json -d 'machine-readable output'
complete -c portal -n '__fish_seen_subcommand_from status' -l watch -d 'keep printing changes'
complete -c portal -n '__fish_seen_subcommand_from open' -l print -d 'only print the sign-in URL'
complete -c portal -n '__fish_seen_subcommand_from open' -l proxy -d 'only run the proxy and print its socks5:// URL'
complete -c portal -n '__fish_seen_subcommand_from open' -l url -x -d 'the page to open'
complete -c portal -n '__fish_seen_subcommand_from open' -l max-time -x -d 'end after this long (15m)'
complete -c portal -n '__fish_seen_subcommand_from open' -l browser -x -a '(__fish_complete_command)' -d 'everyday browser when no sign-in window can be made'
complete -c portal -n '__fish_seen_subcommand_from import' -F -d 'hosts file (- for stdin)'

complete -c portal -n '__fish_seen_subcommand_from daemon' -l listen -x -d 'DNS listen address ADDR[:PORT]'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l upstream -x -d 'static upstream DNS server ADDR[:PORT]'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l state-dir -x -a '(__fish_complete_directories)' -d 'where overrides are kept'
complete -c portal -n '__fish_seen_subcommand_from daemon agent open' -l config -r -F -d 'config file'
complete -c portal -n '__fish_seen_subcommand_from daemon agent open' -l log-level -x -a 'debug info' -d 'log level'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l network-source -x -a 'auto nm netlink none' -d 'where network changes come from'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l wiring -x -a 'auto resolvconf resolved none' -d 'how the stub is wired into name resolution'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l resolv-conf -r -F -d 'resolv.conf to read upstreams from without NetworkManager'
complete -c portal -n '__fish_seen_subcommand_from daemon' -l ca-file -r -F -d "extra CA bundle for the portal's RFC 8908 API"
complete -c portal -n '__fish_seen_subcommand_from agent' -l browser -x -a '(__fish_complete_command)' -d 'command that opens the sign-in page'
complete -c portal -n '__fish_seen_subcommand_from agent' -l sign-in-notification -x -a 'auto always never' -d "when to show portal's own sign-in notification"
complete -c portal -n '__fish_seen_subcommand_from wire' -l resolv-conf -r -F -d 'the file to edit'
complete -c portal -n '__fish_seen_subcommand_from wire' -l request -r -F -d "the daemon's request"
complete -c portal -n '__fish_seen_subcommand_from wire' -l stopped -d 'the daemon has stopped: withdraw its request, take the stub out'
