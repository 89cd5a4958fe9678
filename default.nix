# portal for Nix users without flakes.
#
#   nix-build -A package                 the application, its units, bus policy and polkit actions
#   imports = [ (import /path/to/portal { }).module ];   in a NixOS configuration
#   nix-build -A checks.vm               the NixOS VM test (needs KVM)
{
  pkgs ? import <nixpkgs> { },
}:

{
  package = pkgs.callPackage ./package.nix { };
  module = ./nixos-module;
  checks.vm = pkgs.testers.runNixOSTest ./nixos-module/test.nix;
}
