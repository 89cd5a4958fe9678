# NixOS module for portal, the captive-portal helper.
#
#   imports = [ /path/to/portal/nixos-module ];
#   services.portal.enable = true;
#
# Enable once and rebuild once. Overrides are runtime state of the daemon (kept in
# /var/lib/portal), added and removed with `portal add` / `portal remove`; they never need a
# rebuild.
#
# The units, the bus policy and the polkit actions come from the package (the same files other
# distributions install); this module adds only what NixOS must own: WantedBy (NixOS ignores
# [Install]), the user, the polkit rule for the chosen group, the listen address, the config
# file and the resolver wiring.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;

  cfg = config.services.portal;
  settingsFormat = pkgs.formats.toml { };

  # "auto": systemd-resolved when it is on, else openresolv (NixOS's default), else nothing.
  dnsMode =
    if cfg.dnsIntegration != "auto" then
      cfg.dnsIntegration
    else if config.services.resolved.enable then
      "resolved"
    else if config.networking.resolvconf.enable then
      "resolvconf"
    else
      "none";

  # The dedicated link systemd-resolved routes override names over (see the portal-link unit).
  link = "portal0";
  # resolved ignores links without a non-loopback address; a /32 link-local one is enough and
  # routes nowhere.
  linkAddress = "169.254.53.53/32";

  listen = "${cfg.listenAddress}:53";
  configFile = settingsFormat.generate "portal.toml" cfg.settings;

  jsList = items: "[ ${lib.concatMapStringsSep ", " (s: ''"${s}"'') items} ]";
in
{
  options.services.portal = {
    enable = mkEnableOption "portal, the captive-portal helper (portal detection, DNS overrides, notifications)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage <portal>/package.nix { }";
      description = "The portal package to use.";
    };

    listenAddress = mkOption {
      type = types.strMatching "127\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})";
      default = "127.0.0.153";
      example = "127.0.0.154";
      description = ''
        Loopback address the DNS stub listens on (UDP and TCP port 53, bound by portal.socket).
        127.0.0.53 and 127.0.0.54 belong to systemd-resolved.
      '';
    };

    dnsIntegration = mkOption {
      type = types.enum [
        "auto"
        "resolvconf"
        "resolved"
        "none"
      ];
      default = "auto";
      description = ''
        How the stub joins name resolution. It is never made the only resolver, and it is in
        the path only while it has work (an override answering on this network, or a portal
        being signed in to); otherwise name resolution is exactly the system's own.

        - `resolvconf`: while the stub has work, the root helper `portal-wire.path` puts its
          line first in the resolv.conf openresolv writes; every server openresolv lists (the
          network's, and `networking.nameservers`) follows it, and the stub forwards to them in
          that order. openresolv's configuration is not changed.
        - `resolved`: systemd-resolved sends only the overridden names to the stub, through
          route-only domains on a dedicated link (`portal0`) that the daemon sets at run time,
          with DNS-over-TLS and DNSSEC off for that link alone. Nothing global changes.
        - `none`: leave name resolution alone (point a resolver at the stub yourself).
        - `auto`: `resolved` when `services.resolved.enable`, else `resolvconf`.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "networkmanager";
      description = ''
        Members of this group may add and remove overrides, ask for a portal check and choose
        not to be asked to sign in on a network, without a password (a polkit rule). Everyone
        else is asked for an administrator's password.
      '';
    };

    agent.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Start the per-user agent in graphical sessions: it shows a notification with the sign-in
        page when a network has a captive portal.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          listen = mkOption {
            type = types.listOf types.str;
            default = [ listen ];
            defaultText = lib.literalExpression ''[ "''${config.services.portal.listenAddress}:53" ]'';
            description = ''
              Addresses the DNS stub serves ("ADDR:PORT"). Under systemd the sockets come from
              portal.socket, which this module points at `listenAddress`.
            '';
          };
          admin_group = mkOption {
            type = types.str;
            default = cfg.group;
            defaultText = lib.literalExpression "config.services.portal.group";
            description = "Group allowed to change overrides when polkit is not on the bus.";
          };
          wiring = mkOption {
            type = types.enum [
              "auto"
              "resolvconf"
              "resolved"
              "none"
            ];
            default = dnsMode;
            defaultText = lib.literalExpression "what services.portal.dnsIntegration resolves to";
            description = "How the daemon wires the stub into name resolution at run time.";
          };
        };
      };
      default = { };
      example = {
        default_ttl = "4h";
        upstreams = [ "9.9.9.9" ];
        probe_urls = [ "http://detectportal.firefox.com/canonical.html" ];
      };
      description = ''
        Contents of /etc/portal/portal.toml. Keys: `listen` (list of "ADDR:PORT"), `upstreams`
        (static DNS servers; empty: learned from NetworkManager), `state_dir`, `bus`,
        `admin_group`, `default_ttl` (lifetime of a new override, e.g. "12h"), `max_overrides`,
        `probe_urls`, `portal_api_uri` (RFC 8908 API when the network does not announce one),
        `wiring`, `browser` (the agent's command to open the sign-in page).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = dnsMode != "resolved" || config.services.resolved.enable;
          message = ''services.portal.dnsIntegration = "resolved" needs services.resolved.enable = true.'';
        }
        {
          assertion = dnsMode != "resolvconf" || config.networking.resolvconf.enable;
          message = ''services.portal.dnsIntegration = "resolvconf" needs networking.resolvconf.enable (openresolv).'';
        }
      ];

      # The CLI for everyone, and the package's share/polkit-1/actions for polkitd.
      environment.systemPackages = [ cfg.package ];
      environment.etc."portal/portal.toml".source = configFile;

      # Bus policy: only user portal may own org.portalhelper.Portal1.
      services.dbus.packages = [ cfg.package ];
      # portal.socket, portal.service and the user unit portal-agent.service.
      systemd.packages = [ cfg.package ];

      # Static, not DynamicUser: the bus policy and the polkit owner annotation name "portal"
      # and are loaded before the daemon ever runs.
      users.users.portal = {
        isSystemUser = true;
        group = "portal";
        description = "Captive portal helper";
        home = "/var/lib/portal";
      };
      users.groups.portal = { };

      # "" first resets the packaged ListenDatagram=/ListenStream= lines.
      systemd.sockets.portal = {
        wantedBy = [ "sockets.target" ];
        listenDatagrams = [
          ""
          listen
        ];
        listenStreams = [
          ""
          listen
        ];
      };

      # Started at boot, not only by the first DNS query: detection must run on every network.
      systemd.services.portal = {
        wantedBy = [ "multi-user.target" ];
        restartTriggers = [ configFile ];
      };

      security.polkit.extraConfig = ''
        // portal: members of ${cfg.group} may manage DNS overrides, ask for a portal check and
        // choose networks not to be asked about.
        polkit.addRule(function (action, subject) {
          if ((action.id == "org.portalhelper.portal.manage-overrides" ||
               action.id == "org.portalhelper.portal.check" ||
               action.id == "org.portalhelper.portal.network-choices") &&
              subject.isInGroup("${cfg.group}")) {
            return polkit.Result.YES;
          }
        });
      '';
    }

    (mkIf cfg.agent.enable {
      systemd.user.services.portal-agent.wantedBy = [ "graphical-session.target" ];
    })

    (mkIf (dnsMode == "resolvconf") {
      # The stub first in resolv.conf while it has work, nothing otherwise: the daemon asks in
      # /run/portal, and the helper (portal-wire.path and .service, from the package) puts one
      # line before the servers openresolv wrote and takes exactly that line out again, also
      # whenever the daemon stops. networking.nameservers and openresolv's configuration are
      # left as they are: the stub never passes through openresolv, so neither
      # resolv_conf_local_only nor the pinned servers can drop or displace anything.
      systemd.paths.portal-wire.wantedBy = [ "paths.target" ];
      # Once at boot as well, after openresolv wrote the file.
      systemd.services.portal-wire = {
        wantedBy = [ "multi-user.target" ];
        after = [ "resolvconf.service" ];
      };
      # Enabling or disabling portal restarts resolvconf.service at the switch (its unit
      # changes), which writes resolv.conf afresh from openresolv's own state: with
      # `enable = false` nothing of portal's is left in it, even if the daemon was killed.
      systemd.services.resolvconf.restartTriggers = [ "portal-wire" ];
    })

    (mkIf (dnsMode == "resolved") {
      # A link of its own for route-only domains (one per override, set by the daemon over
      # org.freedesktop.resolve1). A global DNS= races the network's servers and Domains=~.
      # makes the stub a single point of failure; this link can only ever affect the names
      # that are overridden.
      systemd.services.portal-link = {
        description = "portal DNS link ${link} for systemd-resolved";
        wantedBy = [ "multi-user.target" ];
        requiredBy = [ "portal.service" ];
        before = [ "portal.service" ];
        after = [ "systemd-resolved.service" ];
        path = [ pkgs.iproute2 ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          ip link show ${link} >/dev/null 2>&1 || ip link add ${link} type dummy
          ip addr replace ${linkAddress} dev ${link}
          ip link set ${link} up
        '';
        postStop = ''
          ip link del ${link} || true
        '';
      };

      # The overridden names must not keep pointing at a stub that is not running.
      systemd.services.portal.serviceConfig.ExecStopPost = [
        "-+${config.systemd.package}/bin/resolvectl revert ${link}"
      ];

      networking.networkmanager.unmanaged = [ "interface-name:${link}" ];

      # The daemon runs as "portal"; resolved asks polkit before it lets anyone but root
      # change a link.
      security.polkit.extraConfig = ''
        // portal: the daemon may set DNS server, route-only domains and default-route on ${link},
        // turn DNS-over-TLS and DNSSEC off for that link alone (the stub speaks neither; the
        // global settings stay in force for every other name), and revert it.
        polkit.addRule(function (action, subject) {
          if (subject.user == "portal" &&
              ${
                jsList [
                  "org.freedesktop.resolve1.set-dns-servers"
                  "org.freedesktop.resolve1.set-domains"
                  "org.freedesktop.resolve1.set-default-route"
                  "org.freedesktop.resolve1.set-dns-over-tls"
                  "org.freedesktop.resolve1.set-dnssec"
                  "org.freedesktop.resolve1.revert"
                ]
              }.indexOf(action.id) >= 0) {
            return polkit.Result.YES;
          }
        });
      '';
    })
  ]);
}
