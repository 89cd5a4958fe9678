# NixOS VM test of portal: a hotel network with a captive portal, a laptop on NetworkManager +
# openresolv (NixOS's default), and a laptop on systemd-resolved.
#
#   nix-build -E 'with import <nixpkgs> { }; testers.runNixOSTest ./nixos-module/test.nix'
#   nix build .#checks.x86_64-linux.vm            (flake)
#
# Needs KVM. The router hijacks every DNS name to itself and answers every HTTP request with a
# 302 to its sign-in page, as hotel networks do.
{ lib, ... }:

let
  routerAddress = "192.168.1.1";

  # A captive portal in a few lines: /login is the sign-in page, everything else is redirected
  # to it (so NetworkManager's connectivity check and portal's probe see a portal).
  portal302 = builtins.toFile "portal302.py" ''
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Portal(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/login"):
                body = b"<html><title>Hotel Wi-Fi</title><body>Sign in</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
            else:
                body = b""
                self.send_response(302)
                self.send_header("Location", "http://${routerAddress}/login")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    ThreadingHTTPServer(("0.0.0.0", 80), Portal).serve_forever()
  '';

  laptop =
    extra:
    { pkgs, ... }:
    {
      imports = [
        ./default.nix
        extra
      ];
      virtualisation.vlans = [ 1 ];
      # The address comes from the router's DHCP, through NetworkManager only (as in
      # nixpkgs' own NetworkManager tests).
      networking.useDHCP = false;
      networking.interfaces = lib.mkForce { eth1 = { }; };
      networking.networkmanager = {
        enable = true;
        # eth0 is the test driver's own network; it must not bring its DNS server along.
        unmanaged = [ "eth0" ];
        # no automatic "Wired connection" profiles: only the hotel profile below
        settings.main.no-auto-default = "*";
        ensureProfiles.profiles.hotel = {
          connection = {
            id = "hotel";
            type = "ethernet";
            interface-name = "eth1";
            autoconnect = true;
          };
          ipv4.method = "auto";
          ipv6.method = "disabled";
        };
        settings.connectivity = {
          uri = "http://check.hotel.test/nm-check.txt";
          response = "NetworkManager is online";
          interval = 5;
        };
      };
      services.portal.enable = true;
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "networkmanager" ];
      };
      users.users.bob.isNormalUser = true;
      environment.systemPackages = [ pkgs.jq ];
    };
in
{
  name = "portal";

  nodes = {
    router =
      { pkgs, ... }:
      {
        virtualisation.vlans = [ 1 ];
        networking.useDHCP = false;
        networking.firewall.enable = false;
        networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
          {
            address = routerAddress;
            prefixLength = 24;
          }
        ];
        services.dnsmasq = {
          enable = true;
          resolveLocalQueries = false;
          settings = {
            interface = "eth1";
            bind-interfaces = true;
            dhcp-range = [ "192.168.1.100,192.168.1.200,1h" ];
            dhcp-option = [ "option:dns-server,${routerAddress}" ];
            # DNS hijack: every name is the portal
            address = [ "/#/${routerAddress}" ];
            no-resolv = true;
          };
        };
        systemd.services.portal302 = {
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ];
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 ${portal302}";
        };
      };

    # NixOS's default resolver setup: openresolv, the stub first in resolv.conf while it has work.
    laptop = laptop {
      specialisation.without-portal.configuration = {
        services.portal.enable = lib.mkForce false;
      };
    };

    # systemd-resolved: the stub only answers route-only domains on portal0.
    laptop2 = laptop {
      services.resolved.enable = true;
      networking.networkmanager.dns = "systemd-resolved";
    };
  };

  testScript = ''
    import json

    def status(machine):
        return json.loads(machine.succeed("portal status --json"))

    start_all()
    router.wait_for_unit("dnsmasq.service")
    router.wait_for_unit("portal302.service")
    router.wait_for_open_port(80)

    with subtest("NetworkManager gets a lease from the hotel and reports a portal"):
        for machine in (laptop, laptop2):
            machine.wait_for_unit("NetworkManager.service")
            machine.wait_until_succeeds("ip -4 addr show eth1 | grep -q 'inet 192.168.1.1[0-9][0-9]/'")
            # Connectivity 2 = PORTAL
            machine.wait_until_succeeds(
                "busctl get-property org.freedesktop.NetworkManager /org/freedesktop/NetworkManager "
                "org.freedesktop.NetworkManager Connectivity | grep -qx 'u 2'"
            )

    with subtest("the daemon sees the portal"):
        laptop.wait_for_unit("portal.socket")
        laptop.wait_for_unit("portal-wire.path")
        laptop.wait_for_unit("portal.service")
        laptop.wait_until_succeeds("portal status --json | jq -e '.state == \"captive\"'")
        assert "${routerAddress}/login" in status(laptop)["portal_url"], status(laptop)

    with subtest("resolv.conf: while a portal is up, the stub first, the network's server after"):
        laptop.wait_until_succeeds("grep -m1 '^nameserver' /etc/resolv.conf | grep -qx 'nameserver 127.0.0.153'")
        laptop.succeed("grep -qx 'nameserver ${routerAddress}' /etc/resolv.conf")
        laptop.wait_until_succeeds(
            "portal status --json | jq -e '.wiring == \"resolv.conf: stub first, then ${routerAddress} (openresolv)\"'"
        )

    with subtest("a member of the group may add an override; others may not"):
        laptop.succeed("runuser -u alice -- portal add login.hotel.test 10.9.9.9 </dev/null")
        laptop.fail("runuser -u bob -- portal add evil.hotel.test 10.6.6.6 </dev/null")
        laptop.succeed("portal list | grep -q login.hotel.test")
        laptop.fail("portal list | grep -q evil.hotel.test")

    with subtest("glibc sees the override, other names still come from the network"):
        laptop.succeed("getent hosts login.hotel.test | grep -q '^10.9.9.9 '")
        laptop.succeed("getent hosts www.hotel.test | grep -q '^${routerAddress} '")

    with subtest("overrides survive a restart of the daemon"):
        laptop.systemctl("restart portal.service")
        laptop.wait_for_unit("portal.service")
        laptop.succeed("getent hosts login.hotel.test | grep -q '^10.9.9.9 '")

    with subtest("stopping portal takes the stub out of resolv.conf: the override goes, DNS stays"):
        laptop.systemctl("stop portal.socket portal.service")
        laptop.wait_until_fails("grep -q 127.0.0.153 /etc/resolv.conf")
        laptop.succeed("timeout 3 getent hosts example.org | grep -q '^${routerAddress} '")
        laptop.succeed("timeout 3 getent hosts login.hotel.test | grep -q '^${routerAddress} '")
        laptop.systemctl("start portal.socket portal.service")
        laptop.wait_until_succeeds("getent hosts login.hotel.test | grep -q '^10.9.9.9 '")

    with subtest("the service is sandboxed"):
        laptop.succeed("systemd-analyze security portal.service --threshold=15 --no-pager")

    with subtest("systemd-resolved: only overridden names go to the stub"):
        laptop2.wait_for_unit("portal-link.service")
        laptop2.wait_for_unit("portal.service")
        laptop2.succeed("runuser -u alice -- portal add login.hotel.test 10.9.9.9 </dev/null")
        laptop2.wait_until_succeeds("resolvectl domain portal0 | grep -q '~login.hotel.test'")
        # 20 of 20: a global DNS= would race the network's server and lose some of these
        for _ in range(20):
            laptop2.succeed("resolvectl query --cache=no login.hotel.test | grep -q 10.9.9.9")
        laptop2.succeed("getent hosts login.hotel.test | grep -q '^10.9.9.9 '")
        laptop2.succeed("resolvectl query --cache=no example.org | grep -q ${routerAddress}")
        assert status(laptop2)["wiring"] == "resolved link portal0: 1 domain", status(laptop2)
        # nothing global changed (resolvectl's "Global" section also shows per-link servers on
        # some versions, so look at the configuration itself)
        laptop2.fail("grep -rqs 127.0.0.153 /etc/systemd/resolved.conf /etc/systemd/resolved.conf.d")

    with subtest("systemd-resolved: a stopped daemon only affects overridden names"):
        laptop2.systemctl("stop portal.socket portal.service")
        laptop2.succeed("resolvectl query --cache=no example.org | grep -q ${routerAddress}")
        laptop2.succeed("getent hosts www.hotel.test | grep -q '^${routerAddress} '")
        laptop2.systemctl("start portal.socket portal.service")
        laptop2.wait_until_succeeds("resolvectl query --cache=no login.hotel.test | grep -q 10.9.9.9")

    with subtest("disabling the module takes the stub out of resolv.conf"):
        laptop.succeed(
            "/run/booted-system/specialisation/without-portal/bin/switch-to-configuration test"
        )
        laptop.wait_until_fails("grep -q 127.0.0.153 /etc/resolv.conf")
        laptop.succeed("getent hosts example.org | grep -q '^${routerAddress} '")
  '';
}
