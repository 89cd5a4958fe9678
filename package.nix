# portal, built from this source tree: the Python application plus the files the system needs
# to run it (systemd units, D-Bus bus policy and activation, polkit actions), its shell
# completions and its manual page.
#
#   nix-build -E 'with import <nixpkgs> { }; callPackage ./package.nix { }'
#
# The NixOS module (nixos-module/default.nix) uses this as the default for services.portal.package.
{
  lib,
  python3Packages,
  installShellFiles,
}:

let
  pyproject = lib.importTOML ./pyproject.toml;

  # Only what the build and the installed files need: editing the NixOS module, the tests or
  # the docs must not change the package's hash.
  wanted = [
    "pyproject.toml"
    "setup.py" # the optional recvmmsg extension (portal/_udpbatch.c), built with stdenv's cc
    "README.md"
    "LICENSE"
    "portal"
    "systemd"
    "dbus"
    "polkit"
    "completions"
    "man"
  ];
  root = toString ./.;
  src = lib.cleanSourceWith {
    name = "portal-source";
    src = ./.;
    filter =
      path: type:
      let
        rel = lib.removePrefix (root + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      builtins.elem top wanted && lib.cleanSourceFilter path type;
  };
in
python3Packages.buildPythonApplication {
  pname = "portal";
  inherit (pyproject.project) version;
  pyproject = true;
  inherit src;

  build-system = [ python3Packages.setuptools ];
  nativeBuildInputs = [ installShellFiles ];

  dependencies = with python3Packages; [
    dbus-next
    httpx
  ];

  # The test suite needs root, network namespaces, a private D-Bus, polkitd and NetworkManager;
  # none of that exists in the build sandbox. nixos-module/test.nix runs portal in VMs instead.
  doCheck = false;
  pythonImportsCheck = [
    "portal"
    "portal.core.wiring"
  ];

  postInstall = ''
    # systemd units: system units, and the per-user agent (a user unit when it is shipped)
    install -Dm0644 systemd/portal.socket systemd/portal.service -t $out/lib/systemd/system
    # The resolv.conf helper (the NixOS module enables it where openresolv writes resolv.conf).
    install -Dm0644 systemd/portal-wire.path systemd/portal-wire.service \
      -t $out/lib/systemd/system
    if [ -e systemd/portal-agent.service ]; then
      install -Dm0644 systemd/portal-agent.service -t $out/lib/systemd/user
    fi
    install -Dm0644 systemd/sysusers-portal.conf $out/lib/sysusers.d/portal.conf

    # Units name /usr/bin/portal; here the program lives in this package.
    for unit in $out/lib/systemd/system/* $out/lib/systemd/user/*; do
      [ -e "$unit" ] || continue
      sed -i "s|/usr/bin/portal|$out/bin/portal|g" "$unit"
    done
    if grep -rq /usr/bin/portal $out/lib/systemd; then
      echo "a unit still names /usr/bin/portal" >&2
      exit 1
    fi

    # Only user "portal" may own org.portalhelper.Portal1 (services.dbus.packages reads this).
    install -Dm0644 dbus/org.portalhelper.Portal1.conf -t $out/share/dbus-1/system.d
    # D-Bus activation: a call to the control API starts portal.service (Exec= is never run
    # where systemd activates services, as in systemd's own bus service files).
    install -Dm0644 dbus/org.portalhelper.Portal1.service -t $out/share/dbus-1/system-services

    # Shell completions and the manual page.
    installShellCompletion --cmd portal \
      --bash completions/portal.bash \
      --zsh completions/_portal \
      --fish completions/portal.fish
    installManPage man/portal.1
    # polkit actions (NixOS links share/polkit-1 of environment.systemPackages).
    install -Dm0644 polkit/org.portalhelper.portal.policy -t $out/share/polkit-1/actions
    # The distribution rule names both netdev and networkmanager; the NixOS module writes its
    # own rule for services.portal.group, so this copy is kept out of polkit's rules.d.
    install -Dm0644 polkit/50-portal.rules -t $out/share/portal/polkit
  '';

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "portal";
  };
}
