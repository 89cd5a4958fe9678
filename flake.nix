{
  description = "portal: captive-portal helper for Linux laptops";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./package.nix { };
        portal = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      # imports = [ portal.nixosModules.default ]; services.portal.enable = true;
      nixosModules.default = import ./nixos-module;
      nixosModules.portal = self.nixosModules.default;

      overlays.default = final: _prev: { portal = final.callPackage ./package.nix { }; };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # NixOS VM test (needs KVM): nix build .#checks.x86_64-linux.vm
        vm = pkgs.testers.runNixOSTest ./nixos-module/test.nix;
      });
    };
}
