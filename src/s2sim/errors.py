"""Typed errors. The CLI turns any `S2SimError` into one line and exit code 2."""


class S2SimError(Exception):
    """Base of every error caused by bad input or impossible configuration."""


class GeometryError(S2SimError):
    """A granule / IPA size combination the architecture or KVM cannot do."""


class DescriptorError(S2SimError):
    """A descriptor value with a reserved or impossible encoding."""


class AddressError(S2SimError):
    """An address or size that is out of range or not aligned."""


class ConfigError(S2SimError):
    """A malformed option, profile, script or trace."""


def parse_size(text: str, what: str = "size") -> int:
    """Parse '4K', '2M', '1G', '20G', '0x1000' or '4096' into bytes."""
    s = str(text).strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s[-1:].upper() in units:
            n = s[:-1]
            if n.upper().endswith("I"):
                n = n[:-1]
            return int(n, 0) * units[s[-1].upper()]
        if s[-2:].upper() in ("KB", "MB", "GB", "TB"):
            return int(s[:-2], 0) * units[s[-2].upper()]
        return int(s, 0)
    except (ValueError, IndexError):
        raise ConfigError(
            f"{what} {text!r} is not a size; use a number of bytes (decimal or 0x hex) "
            "or a number with K, M, G or T"
        ) from None


def parse_int(text: str, what: str = "value") -> int:
    """Parse a decimal or 0x-prefixed hex integer."""
    try:
        return int(str(text).strip().replace("_", ""), 0)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an integer (decimal or 0x hex)") from None
