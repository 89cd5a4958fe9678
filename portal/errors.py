"""The one exception tree of portal. Nothing here does I/O.

    PortalError
     ├── ConfigError(ValueError)          bad config file or flag value
     ├── OverrideError
     │    ├── InvalidDomain(ValueError)
     │    ├── InvalidAddress(ValueError)
     │    ├── InvalidTTL(ValueError)
     │    ├── TooManyOverrides
     │    ├── NoNetwork                    no network to scope an override to
     │    └── NoSuchOverride(LookupError)
     ├── NoSuchNetwork(LookupError)        no remembered choice about that network
     ├── StateError                        the state file cannot be read or written
     ├── NotAuthorized(PermissionError)    the caller may not change overrides
     └── DaemonUnreachable                 the CLI cannot reach the daemon on its bus

Third-party exceptions are translated into these once, at the edge that meets them.
"""


class PortalError(Exception):
    """Base class of every error portal raises on purpose."""


class ConfigError(ValueError, PortalError):
    """A configuration value (file, flag or environment) is invalid."""


class OverrideError(PortalError):
    """An override cannot be made or changed."""


class InvalidDomain(ValueError, OverrideError):
    """The name is not a valid domain name."""


class InvalidAddress(ValueError, OverrideError):
    """The address is not a valid IPv4 or IPv6 address."""


class InvalidTTL(ValueError, OverrideError):
    """The lifetime is not a valid duration."""


class TooManyOverrides(OverrideError):
    """The override table is full."""


class NoNetwork(OverrideError):
    """The override should belong to the current network, and none is known."""


class NoSuchOverride(LookupError, OverrideError):
    """No override exists for the name."""


class NoSuchNetwork(LookupError, PortalError):
    """No network the user chose "don't ask again" for goes by that name or id."""


class StateError(PortalError):
    """The state file cannot be read or written."""


class NotAuthorized(PermissionError, PortalError):
    """The caller is not allowed to change overrides."""


class DaemonUnreachable(PortalError):
    """The daemon is not running on the bus the CLI asked, or the bus is missing."""
