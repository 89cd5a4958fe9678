"""What the tests share, in one place (import from the module that holds it):

    procs     the source tree, the CLI's command line, waiting, free ports, stopping processes
    dbus      private dbus-daemons (one bus configuration), a bus that can be killed and restarted
    dns       real dnsmasq upstreams, scripted upstreams, raw DNS exchanges, dig
    daemon    the real `portal daemon` and CLI as subprocesses, as a user runs them
    system    network namespaces, tiny file systems, throwaway users
    probes    recorded probe answers (tests/data/probe)
    desktop   Xvfb and dunst, a stand-in daemon and notification server for the agent's tests

Everything started here is bounded in time and stopped by PID; nothing here decides what a test
expects. Test-only code: never imported by portal/.
"""
